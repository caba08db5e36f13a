// Peer: Go net/http + gorilla/websocket over TLS; a writer goroutine per client with a
// bounded channel, broadcast to all but the sender.
package main

import (
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"os"
	"regexp"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

type client struct {
	conn *websocket.Conn
	send chan []byte
}

type room struct {
	mu      sync.Mutex
	members map[*client]struct{}
	seq     uint64
}

var (
	roomPath = regexp.MustCompile(`^/rooms/([A-Za-z0-9_.-]{1,64})$`)
	roomsMu  sync.Mutex
	rooms    = map[string]*room{}
)

func getRoom(name string) *room {
	roomsMu.Lock()
	defer roomsMu.Unlock()
	r, ok := rooms[name]
	if !ok {
		r = &room{members: map[*client]struct{}{}}
		rooms[name] = r
	}
	return r
}

func main() {
	port, cert, key := os.Getenv("PORT"), os.Getenv("CERT"), os.Getenv("KEY")
	token, origin := os.Getenv("TOKEN"), os.Getenv("ORIGIN")
	upgrader := websocket.Upgrader{
		ReadBufferSize:  4096,
		WriteBufferSize: 4096,
		CheckOrigin:     func(r *http.Request) bool { return r.Header.Get("Origin") == origin },
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		m := roomPath.FindStringSubmatch(r.URL.Path)
		if m == nil {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Origin") != origin {
			http.Error(w, "origin", http.StatusForbidden)
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "token", http.StatusUnauthorized)
			return
		}
		conn, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		conn.SetReadLimit(4096 + 1024)
		rm := getRoom(m[1])
		c := &client{conn: conn, send: make(chan []byte, 1024)}
		rm.mu.Lock()
		rm.members[c] = struct{}{}
		rm.mu.Unlock()
		go func() {
			for msg := range c.send {
				if conn.WriteMessage(websocket.TextMessage, msg) != nil {
					return
				}
			}
		}()
		defer func() {
			rm.mu.Lock()
			delete(rm.members, c)
			rm.mu.Unlock()
			close(c.send)
			conn.Close()
		}()
		for {
			kind, data, err := conn.ReadMessage()
			if err != nil {
				return
			}
			if kind != websocket.TextMessage {
				return
			}
			var in struct {
				Type string `json:"type"`
				Text string `json:"text"`
			}
			if json.Unmarshal(data, &in) != nil || in.Type != "message" || len(in.Text) > 4096 {
				continue
			}
			rm.mu.Lock()
			rm.seq++
			out, _ := json.Marshal(map[string]any{
				"type": "message", "room": m[1], "from": "user",
				"text": html.EscapeString(in.Text), "seq": rm.seq, "ts": time.Now().UnixMilli(),
			})
			for peer := range rm.members {
				if peer != c {
					select {
					case peer.send <- out:
					default: // slow consumer: drop rather than block the room
					}
				}
			}
			rm.mu.Unlock()
		}
	})
	fmt.Printf("listening on 127.0.0.1:%s\n", port)
	if err := http.ListenAndServeTLS("127.0.0.1:"+port, cert, key, nil); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
}
