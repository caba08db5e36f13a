//! HKDF for TLS 1.3's key schedule, each pseudorandom key held as a keyed HMAC.
//!
//! Why: rustls's aws-lc-rs provider runs every HKDF-Expand from nothing. It keys HMAC with the
//! pseudorandom key (PRK) again for each label, two hash blocks, and a PRK that came out of
//! HKDF-Extract is not kept at all: aws-lc-rs runs the extract again on every expand. A full
//! TLS 1.3 handshake expands about twenty labels from seven keys, so with SHA-384 (which has
//! no hardware help on x86) HKDF was ~17 % of a handshake's CPU (`bench/profile.sh
//! handshakes-x25519`). Here a PRK is keyed into HMAC once (aws-lc-rs's `hmac::Key` keeps the
//! inner and outer hash states) and each expand costs HMAC's own two blocks. The function is
//! the same (RFC 5869) on the same aws-lc primitives; the tests check it against the
//! provider's own HKDF, bit for bit. Only the TLS 1.3 suites are touched (TLS 1.2 has a PRF,
//! not HKDF); suites, their order, groups and everything else stay the provider's defaults.

use std::sync::LazyLock;

use aws_lc_rs::hmac;
use rustls::crypto::hash::HashAlgorithm;
use rustls::crypto::tls13::{Hkdf, HkdfExpander, OkmBlock, OutputLengthError};
use rustls::crypto::CryptoProvider;
use rustls::{CipherSuiteCommon, SupportedCipherSuite, Tls13CipherSuite};

/// aws-lc-rs's provider with its TLS 1.3 suites deriving keys through `KeyedHkdf` below.
pub fn provider() -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    for suite in &mut provider.cipher_suites {
        if let SupportedCipherSuite::Tls13(base) = suite {
            if let Some(ours) = SUITES.iter().find(|s| s.common.suite == base.common.suite) {
                *suite = SupportedCipherSuite::Tls13(ours);
            }
        }
    }
    provider
}

static HKDF_SHA256: KeyedHkdf = KeyedHkdf(&hmac::HMAC_SHA256);
static HKDF_SHA384: KeyedHkdf = KeyedHkdf(&hmac::HMAC_SHA384);

/// The provider's TLS 1.3 suites with only their HKDF replaced.
static SUITES: LazyLock<Vec<Tls13CipherSuite>> = LazyLock::new(|| {
    rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
        .iter()
        .filter_map(|suite| match suite {
            SupportedCipherSuite::Tls13(base) => {
                let hkdf: &'static dyn Hkdf = match base.common.hash_provider.algorithm() {
                    HashAlgorithm::SHA256 => &HKDF_SHA256,
                    HashAlgorithm::SHA384 => &HKDF_SHA384,
                    _ => return None,
                };
                Some(Tls13CipherSuite {
                    common: CipherSuiteCommon {
                        suite: base.common.suite,
                        hash_provider: base.common.hash_provider,
                        confidentiality_limit: base.common.confidentiality_limit,
                    },
                    hkdf_provider: hkdf,
                    aead_alg: base.aead_alg,
                    quic: base.quic,
                })
            }
            _ => None,
        })
        .collect()
});

/// HKDF over one of aws-lc-rs's HMACs.
struct KeyedHkdf(&'static hmac::Algorithm);

impl KeyedHkdf {
    fn len(&self) -> usize {
        self.0.digest_algorithm().output_len()
    }
}

impl Hkdf for KeyedHkdf {
    fn extract_from_zero_ikm(&self, salt: Option<&[u8]>) -> Box<dyn HkdfExpander> {
        self.extract_from_secret(salt, &[0u8; OkmBlock::MAX_LEN][..self.len()])
    }

    fn extract_from_secret(&self, salt: Option<&[u8]>, secret: &[u8]) -> Box<dyn HkdfExpander> {
        let zeroes = [0u8; OkmBlock::MAX_LEN];
        let salt = salt.unwrap_or(&zeroes[..self.len()]);
        let prk = OkmBlock::new(hmac::sign(&hmac::Key::new(*self.0, salt), secret).as_ref());
        self.expander_for_okm(&prk)
    }

    fn expander_for_okm(&self, okm: &OkmBlock) -> Box<dyn HkdfExpander> {
        Box::new(Expander(hmac::Key::new(*self.0, okm.as_ref())))
    }

    fn hmac_sign(&self, key: &OkmBlock, message: &[u8]) -> rustls::crypto::hmac::Tag {
        rustls::crypto::hmac::Tag::new(
            hmac::sign(&hmac::Key::new(*self.0, key.as_ref()), message).as_ref(),
        )
    }
}

/// HKDF-Expand from one PRK, keyed into HMAC once.
struct Expander(hmac::Key);

impl Expander {
    /// T(n) = HMAC(PRK, T(n-1) | info | n), with T(0) empty (RFC 5869, section 2.3).
    fn block(&self, previous: &[u8], info: &[&[u8]], n: u8) -> OkmBlock {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(previous);
        for part in info {
            ctx.update(part);
        }
        ctx.update(&[n]);
        OkmBlock::new(ctx.sign().as_ref())
    }
}

impl HkdfExpander for Expander {
    fn expand_slice(&self, info: &[&[u8]], output: &mut [u8]) -> Result<(), OutputLengthError> {
        let len = self.hash_len();
        if output.len() > 255 * len {
            return Err(OutputLengthError);
        }
        let mut t = OkmBlock::new(&[]);
        for (i, chunk) in output.chunks_mut(len).enumerate() {
            // At most 255 blocks, checked above.
            t = self.block(t.as_ref(), info, i as u8 + 1);
            chunk.copy_from_slice(&t.as_ref()[..chunk.len()]);
        }
        Ok(())
    }

    fn expand_block(&self, info: &[&[u8]]) -> OkmBlock {
        self.block(&[], info, 1)
    }

    fn hash_len(&self) -> usize {
        self.0.algorithm().digest_algorithm().output_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The provider's own suite (its HKDF) and ours for each TLS 1.3 suite.
    fn pairs() -> Vec<(&'static Tls13CipherSuite, &'static Tls13CipherSuite)> {
        let ours = provider();
        rustls::crypto::aws_lc_rs::default_provider()
            .cipher_suites
            .iter()
            .filter_map(|s| match s {
                SupportedCipherSuite::Tls13(base) => Some(*base),
                _ => None,
            })
            .map(|base| {
                let mine = ours
                    .cipher_suites
                    .iter()
                    .find_map(|s| match s {
                        SupportedCipherSuite::Tls13(t) if t.common.suite == base.common.suite => {
                            Some(*t)
                        }
                        _ => None,
                    })
                    .expect("every TLS 1.3 suite is kept");
                (base, mine)
            })
            .collect()
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn same_suites_in_the_same_order_and_only_tls13_changed() {
        let theirs = rustls::crypto::aws_lc_rs::default_provider();
        let ours = provider();
        let names = |p: &CryptoProvider| {
            p.cipher_suites
                .iter()
                .map(|s| s.suite())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&ours), names(&theirs));
        assert_eq!(pairs().len(), 3);
        for (base, mine) in pairs() {
            assert!(!std::ptr::eq(base, mine));
        }
        assert_eq!(ours.kx_groups.len(), theirs.kx_groups.len());
    }

    #[test]
    fn derives_what_the_providers_hkdf_derives() {
        for (base, mine) in pairs() {
            let (theirs, ours) = (base.hkdf_provider, mine.hkdf_provider);
            let len = base.common.hash_provider.output_len();
            // Salts: none, short, a hash's length, longer than a SHA-512 block (hashed first).
            let salts = [
                None,
                Some(bytes(5, 1)),
                Some(bytes(len, 2)),
                Some(bytes(200, 3)),
            ];
            let secrets = [bytes(0, 0), bytes(32, 4), bytes(len, 5), bytes(300, 6)];
            let infos: [&[&[u8]]; 3] = [&[], &[b"tls13 ", b"c hs traffic"], &[&[0u8; 100], b"x"]];
            for salt in &salts {
                let expanders = |h: &dyn Hkdf| {
                    let mut all = vec![h.extract_from_zero_ikm(salt.as_deref())];
                    for secret in &secrets {
                        all.push(h.extract_from_secret(salt.as_deref(), secret));
                    }
                    all
                };
                for (a, b) in expanders(theirs).iter().zip(expanders(ours).iter()) {
                    assert_eq!(a.hash_len(), b.hash_len());
                    for info in infos {
                        assert_eq!(a.expand_block(info).as_ref(), b.expand_block(info).as_ref());
                        for n in [0, 1, 12, len, len + 1, 3 * len + 7, 255 * len] {
                            let (mut x, mut y) = (vec![0u8; n], vec![1u8; n]);
                            a.expand_slice(info, &mut x).unwrap();
                            b.expand_slice(info, &mut y).unwrap();
                            assert_eq!(x, y, "{:?} len {n}", base.common.suite);
                        }
                        let mut over = vec![0u8; 255 * len + 1];
                        assert!(a.expand_slice(info, &mut over).is_err());
                        assert!(b.expand_slice(info, &mut over).is_err());
                    }
                }
            }
            let okm = OkmBlock::new(&bytes(len, 9));
            let (a, b) = (theirs.expander_for_okm(&okm), ours.expander_for_okm(&okm));
            assert_eq!(
                a.expand_block(&[b"k"]).as_ref(),
                b.expand_block(&[b"k"]).as_ref()
            );
            for msg in [&b""[..], b"finished", &[7u8; 300]] {
                assert_eq!(
                    theirs.hmac_sign(&okm, msg).as_ref(),
                    ours.hmac_sign(&okm, msg).as_ref()
                );
            }
        }
    }
}
