//! The TLS record layer's error path, from outside: after the handshake, a bad record gets
//! exactly one fatal alert and then the end of the stream, as stock rustls answers it (issue
//! 30). Raw-socket tests against the real binary, and the differential check (tls_io against
//! rustls's buffered server, in memory) over hand-picked streams; the fuzz target
//! `tls_records` explores further from the same code (fuzz/src/tls_records.rs).

use crate::checks::tls_records::{self, differential, Op, Outcome, Seen, TcpWire, Version};
use crate::support::*;

const FATAL: u8 = 2;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;

/// Run `ops` against the real server after a handshake in `version`.
fn against_server(s: &Server, version: Version, ops: &[Op]) -> Outcome {
    let mut wire = TcpWire::connect(s.addr);
    tls_records::run(&mut wire, version, &s.trusted_ca, ops).unwrap()
}

/// What stock rustls answers to `ops` (in memory, same rustls build, wss-chat's config).
fn stock(version: Version, ops: &[Op]) -> Outcome {
    differential(version, usize::MAX, ops).1.compared()
}

fn forged() -> Vec<Op> {
    vec![Op::Forged((0..48).map(|i| (i * 37 + 11) as u8).collect())]
}

#[test]
fn a_forged_record_gets_exactly_one_bad_record_mac_then_eof_in_tls13_and_tls12() {
    let s = Server::start();
    for version in [Version::Tls13, Version::Tls12] {
        let got = against_server(&s, version, &forged()).compared();
        assert_eq!(
            got,
            Outcome {
                seen: vec![Seen::Alert {
                    level: FATAL,
                    description: BAD_RECORD_MAC
                }],
                closed: true
            },
            "{version:?}"
        );
        assert_eq!(
            got,
            stock(version, &forged()),
            "{version:?}: stock rustls differs"
        );
    }
}

#[test]
fn a_record_over_the_limit_gets_exactly_one_record_overflow() {
    let s = Server::start();
    // Correctly encrypted TLS 1.3 records of 2^14 bytes of data: padded by one byte, the inner
    // plaintext is one over its limit of 2^14 + 1; padded by 240, the record on the wire is
    // one over its limit of 2^14 + 256. Unpadded, it is data like any other.
    for pad in [1, 240] {
        let over = [Op::Padded { len: 1 << 14, pad }];
        let got = against_server(&s, Version::Tls13, &over).compared();
        assert_eq!(
            got,
            Outcome {
                seen: vec![Seen::Alert {
                    level: FATAL,
                    description: RECORD_OVERFLOW
                }],
                closed: true
            },
            "padded by {pad}"
        );
        assert_eq!(got, stock(Version::Tls13, &over), "padded by {pad}");
    }
    let at = [Op::Padded {
        len: 1 << 14,
        pad: 0,
    }];
    let (ours, theirs) = differential(Version::Tls13, usize::MAX, &at);
    assert!(
        matches!(&ours.compared().seen[..], [Seen::Data(d)] if d.len() == 1 << 14),
        "{ours:?}"
    );
    assert_eq!(ours.compared(), theirs.compared());
}

#[test]
fn an_all_zero_inner_content_type_is_answered_as_stock_rustls_answers_it() {
    let s = Server::start();
    let ops = [Op::ZeroInner(32)];
    let expected = stock(Version::Tls13, &ops);
    assert!(expected.closed, "stock rustls closes: {expected:?}");
    assert_eq!(
        against_server(&s, Version::Tls13, &ops).compared(),
        expected
    );
}

#[test]
fn after_a_bad_record_nothing_more_is_said_even_when_more_records_follow() {
    let s = Server::start();
    for version in [Version::Tls13, Version::Tls12] {
        let mut ops = forged();
        ops.push(Op::Data(b"after".to_vec()));
        ops.push(Op::CloseNotify);
        let got = against_server(&s, version, &ops).compared();
        assert_eq!(
            got.alerts(),
            [(FATAL, BAD_RECORD_MAC)],
            "{version:?}: {got:?}"
        );
        assert_eq!(got, stock(version, &ops), "{version:?}");
    }
}

/// Streams that reach each branch of the record layer's error path (and the paths beside it),
/// each fed to tls_io and to stock rustls; any difference fails with both outcomes.
#[test]
fn tls_io_answers_every_stream_as_stock_rustls_does() {
    let data = |n: usize| (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
    let cases: Vec<Vec<Op>> = vec![
        vec![Op::Data(data(5)), Op::Data(data(16_384))],
        vec![Op::Chunk(1), Op::Data(data(300))],
        vec![Op::Chunk(7), Op::Data(data(40)), Op::Forged(data(40))],
        vec![Op::Data(data(5)), Op::Forged(data(100))],
        vec![Op::Flip {
            len: 50,
            at: 20,
            bit: 3,
        }],
        // The header's type byte, its version and its length.
        vec![Op::Flip {
            len: 50,
            at: 0,
            bit: 0,
        }],
        vec![Op::Flip {
            len: 50,
            at: 2,
            bit: 1,
        }],
        vec![Op::Flip {
            len: 50,
            at: 4,
            bit: 0,
        }],
        vec![Op::Truncated { len: 64, cut: 10 }, Op::Data(data(8))],
        vec![Op::Truncated { len: 64, cut: 10 }, Op::Eof],
        vec![Op::Oversized {
            extra: 1,
            sent: usize::MAX,
        }],
        vec![Op::Oversized { extra: 0, sent: 0 }],
        vec![Op::Oversized {
            extra: 2048,
            sent: 100,
        }],
        vec![Op::Forged(data(20_000))],
        vec![Op::Data(data(16_385))],
        vec![Op::Padded {
            len: 1 << 14,
            pad: 239,
        }],
        vec![Op::Padded {
            len: 1 << 14,
            pad: 240,
        }],
        vec![Op::Padded { len: 10, pad: 3000 }],
        vec![Op::ZeroInner(0), Op::Data(data(3))],
        vec![Op::ZeroInner(40)],
        vec![Op::Inner {
            typ: 0x16,
            payload: data(30),
        }],
        vec![Op::Inner {
            typ: 0x14,
            payload: vec![1],
        }],
        vec![Op::Inner {
            typ: 0x15,
            payload: vec![2, 40],
        }],
        vec![Op::Inner {
            typ: 0x15,
            payload: vec![1, 90],
        }],
        vec![Op::Inner {
            typ: 0x99,
            payload: data(4),
        }],
        vec![Op::Raw(vec![0x17, 3, 3, 0, 0])],
        vec![Op::Raw(vec![0x30, 3, 3, 0, 4, 1, 2, 3, 4])],
        vec![Op::CloseNotify],
        vec![Op::Data(data(10)), Op::CloseNotify, Op::Data(data(10))],
        vec![Op::Eof],
    ];
    let mut differ = Vec::new();
    for version in [Version::Tls13, Version::Tls12] {
        for hs_chunk in [usize::MAX, 1, 27] {
            for ops in &cases {
                let (ours, theirs) = differential(version, hs_chunk, ops);
                if ours.compared() != theirs.compared() {
                    differ.push(format!(
                        "{version:?}, handshake in pieces of {hs_chunk}, {ops:?}:\n  tls_io {ours:?}\n  stock  {theirs:?}"
                    ));
                }
            }
        }
    }
    assert!(
        differ.is_empty(),
        "{} differences:\n{}",
        differ.len(),
        differ.join("\n")
    );
}
