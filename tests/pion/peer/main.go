// Command peer is a third implementation of the p2pd data-channel protocol, on pion/webrtc
// v3 as Debian packages it, written from docs/PROTOCOL.md (section 3, and section 4 for
// signaling by hand). It signals like pion's data-channel examples: each side prints its
// session description as base64 of the JSON {"type","sdp"} and reads the other's from
// stdin, one line each.
//
//	peer [-loopback] send FILE     offers FILE, prints the offer, reads the answer
//	peer [-loopback] receive DIR   reads the offer, prints the answer, saves into DIR
//
// Descriptions go to stdout; the authentication string and errors go to stderr, as p2p
// prints them. The exit status is 0 only when the file was verified by the receiver.
package main

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pion/ice/v2"
	"github.com/pion/webrtc/v3"
)

const (
	label = "p2pd/3"
	// Under pion v3's 65,535-byte read buffer, and what p2pd's receiver takes.
	chunkBytes  = 32 * 1024
	highWater   = 4 << 20
	lowWater    = 1 << 20
	stepTimeout = 60 * time.Second
)

type message struct {
	Type    string          `json:"type"`
	Commit  string          `json:"commit,omitempty"`
	Nonce   string          `json:"nonce,omitempty"`
	Files   []fileEntry     `json:"files,omitempty"`
	More    bool            `json:"more,omitempty"`
	Index   *int            `json:"index,omitempty"`
	Offset  uint64          `json:"offset,omitempty"`
	SHA256  string          `json:"sha256,omitempty"`
	Reason  string          `json:"reason,omitempty"`
	Bytes   uint64          `json:"bytes,omitempty"`
	Rest    json.RawMessage `json:"-"`
	binary  []byte
	isText  bool
	rawText string
}

type fileEntry struct {
	Name string `json:"name"`
	Size uint64 `json:"size"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "error: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	loopback := flag.Bool("loopback", false, "host candidates on loopback only (tests)")
	flag.Parse()
	if flag.NArg() != 2 || (flag.Arg(0) != "send" && flag.Arg(0) != "receive") {
		fail("usage: peer [-loopback] send FILE | receive DIR")
	}
	se := webrtc.SettingEngine{}
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	if *loopback {
		se.SetIncludeLoopbackCandidate(true)
		se.SetIPFilter(func(ip net.IP) bool { return ip.IsLoopback() })
		se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	}
	api := webrtc.NewAPI(webrtc.WithSettingEngine(se))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		fail("cannot create a peer connection: %v", err)
	}
	defer pc.Close()
	stdin := bufio.NewReaderSize(os.Stdin, 1<<16)
	if flag.Arg(0) == "send" {
		send(pc, stdin, flag.Arg(1))
	} else {
		receive(pc, stdin, flag.Arg(1))
	}
}

// --- signaling by hand ---

func encode(desc *webrtc.SessionDescription) string {
	b, err := json.Marshal(desc)
	if err != nil {
		fail("cannot encode the description: %v", err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

func readDescription(stdin *bufio.Reader) webrtc.SessionDescription {
	line, err := stdin.ReadString('\n')
	if err != nil && line == "" {
		fail("stdin closed before a description arrived")
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(line))
	if err != nil {
		fail("the pasted description is not base64")
	}
	var desc webrtc.SessionDescription
	if err := json.Unmarshal(b, &desc); err != nil {
		fail("the pasted description is not JSON")
	}
	return desc
}

func printLocal(pc *webrtc.PeerConnection, gathered <-chan struct{}) {
	select {
	case <-gathered:
	case <-time.After(15 * time.Second):
		fail("ICE gathering did not finish within 15 s")
	}
	fmt.Println(encode(pc.LocalDescription()))
}

// --- the channel, as a queue of messages ---

type channel struct {
	dc    *webrtc.DataChannel
	inbox chan message
	low   chan struct{}
	open  chan struct{}
}

func wrap(dc *webrtc.DataChannel) *channel {
	c := &channel{dc: dc, inbox: make(chan message, 64), low: make(chan struct{}, 1), open: make(chan struct{})}
	dc.SetBufferedAmountLowThreshold(lowWater)
	dc.OnBufferedAmountLow(func() {
		select {
		case c.low <- struct{}{}:
		default:
		}
	})
	dc.OnOpen(func() { close(c.open) })
	dc.OnClose(func() { close(c.inbox) })
	dc.OnMessage(func(m webrtc.DataChannelMessage) {
		if !m.IsString {
			c.inbox <- message{binary: append([]byte(nil), m.Data...)}
			return
		}
		var msg message
		if err := json.Unmarshal(m.Data, &msg); err != nil {
			fail("the other side sent a malformed control message")
		}
		msg.isText = true
		msg.rawText = string(m.Data)
		c.inbox <- msg
	})
	return c
}

func (c *channel) sendJSON(v interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		fail("cannot encode a message: %v", err)
	}
	if err := c.dc.SendText(string(b)); err != nil {
		fail("cannot send: %v", err)
	}
}

func (c *channel) sendBinary(b []byte) {
	for c.dc.BufferedAmount() > highWater {
		select {
		case <-c.low:
		case <-time.After(stepTimeout):
			fail("the channel did not drain within a minute")
		}
	}
	if err := c.dc.Send(b); err != nil {
		fail("cannot send: %v", err)
	}
}

// next returns the next message, skipping progress reports.
func (c *channel) next() message {
	for {
		select {
		case m, ok := <-c.inbox:
			if !ok {
				fail("the channel closed")
			}
			if m.isText && m.Type == "progress" {
				continue
			}
			if m.isText && m.Type == "cancel" {
				fail("the other side cancelled: %s", m.Reason)
			}
			return m
		case <-time.After(stepTimeout):
			fail("nothing arrived within a minute")
		}
	}
}

func (c *channel) expect(kind string) message {
	m := c.next()
	if !m.isText || m.Type != kind {
		fail("expected %q, got %q", kind, m.Type)
	}
	return m
}

// --- the authentication string (PROTOCOL.md section 4) ---

func fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02x", b)
	}
	return strings.Join(parts, ":")
}

func fingerprints(pc *webrtc.PeerConnection) (local, remote string) {
	certs := pc.GetConfiguration().Certificates
	if len(certs) == 0 {
		fail("no local certificate")
	}
	fps, err := certs[0].GetFingerprints()
	if err != nil || len(fps) == 0 {
		fail("no local fingerprint")
	}
	local = strings.ToLower(fps[0].Value)
	remote = fingerprint(pc.SCTP().Transport().GetRemoteCertificate())
	return local, remote
}

func commitment(nonce []byte) []byte {
	h := sha256.New()
	h.Write([]byte("p2pd/1 sas commit\x00"))
	h.Write(nonce)
	return h.Sum(nil)
}

func sas(offerer, answerer string, senderNonce, receiverNonce []byte) string {
	h := sha256.New()
	h.Write([]byte("p2pd/1 sas\x00"))
	for _, fp := range []string{offerer, answerer} {
		fp = strings.ToLower(strings.TrimSpace(fp))
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(fp)))
		h.Write(n[:])
		h.Write([]byte(fp))
	}
	h.Write(senderNonce)
	h.Write(receiverNonce)
	v := binary.BigEndian.Uint32(h.Sum(nil)[:4]) % 1000000
	return fmt.Sprintf("%03d %03d", v/1000, v%1000)
}

func nonce() []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		fail("no randomness: %v", err)
	}
	return b
}

func showSAS(s string) {
	fmt.Fprintf(os.Stderr, "Authentication string: %s (the other side must show the same)\n", s)
}

// --- sending ---

func send(pc *webrtc.PeerConnection, stdin *bufio.Reader, path string) {
	file, err := os.Open(path)
	if err != nil {
		fail("cannot open %s: %v", path, err)
	}
	defer file.Close()
	info, err := file.Stat()
	if err != nil {
		fail("cannot read %s: %v", path, err)
	}
	ordered := true
	dc, err := pc.CreateDataChannel(label, &webrtc.DataChannelInit{Ordered: &ordered})
	if err != nil {
		fail("cannot create the channel: %v", err)
	}
	c := wrap(dc)
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		fail("cannot create an offer: %v", err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		fail("cannot set the offer: %v", err)
	}
	printLocal(pc, gathered)
	answer := readDescription(stdin)
	if err := pc.SetRemoteDescription(answer); err != nil {
		fail("the answer does not apply: %v", err)
	}
	select {
	case <-c.open:
	case <-time.After(stepTimeout):
		fail("the channel did not open within a minute")
	}

	local, remote := fingerprints(pc)
	mine := nonce()
	c.sendJSON(map[string]string{"type": "sas_commit", "commit": hex.EncodeToString(commitment(mine))})
	theirs, err := hex.DecodeString(c.expect("sas_nonce").Nonce)
	if err != nil || len(theirs) != 32 {
		fail("a malformed nonce")
	}
	c.sendJSON(map[string]string{"type": "sas_reveal", "nonce": hex.EncodeToString(mine)})
	showSAS(sas(local, remote, mine, theirs))

	size := uint64(info.Size())
	c.sendJSON(map[string]interface{}{"type": "offer", "files": []fileEntry{{Name: filepath.Base(path), Size: size}}})
	switch m := c.next(); m.Type {
	case "accept":
	case "reject":
		fail("the receiver declined: %s", m.Reason)
	default:
		fail("expected accept, got %q", m.Type)
	}
	c.sendJSON(map[string]interface{}{"type": "file_start", "index": 0})
	digest := sha256.New()
	buf := make([]byte, chunkBytes)
	for {
		n, err := io.ReadFull(file, buf)
		if n > 0 {
			digest.Write(buf[:n])
			c.sendBinary(append([]byte(nil), buf[:n]...))
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			fail("cannot read %s: %v", path, err)
		}
	}
	c.sendJSON(map[string]interface{}{"type": "file_end", "index": 0, "sha256": hex.EncodeToString(digest.Sum(nil))})
	switch m := c.next(); m.Type {
	case "file_verified":
	case "file_failed":
		fail("the receiver could not verify the file: %s", m.Reason)
	default:
		fail("expected file_verified, got %q", m.Type)
	}
	c.sendJSON(map[string]string{"type": "done"})
	// The receiver closes once it has read "done"; closing first could lose it.
	select {
	case <-c.inbox:
	case <-time.After(10 * time.Second):
	}
	fmt.Fprintf(os.Stderr, "Sent %s, verified by the receiver\n", filepath.Base(path))
}

// --- receiving ---

func safeName(name string) bool {
	if name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "\\") {
		return false
	}
	for _, part := range strings.Split(name, "/") {
		if part == "" || part == "." || part == ".." {
			return false
		}
	}
	return true
}

func receive(pc *webrtc.PeerConnection, stdin *bufio.Reader, dir string) {
	channels := make(chan *channel, 1)
	pc.OnDataChannel(func(dc *webrtc.DataChannel) {
		if dc.Label() != label {
			dc.Close()
			return
		}
		select {
		case channels <- wrap(dc):
		default:
			dc.Close()
		}
	})
	offer := readDescription(stdin)
	if err := pc.SetRemoteDescription(offer); err != nil {
		fail("the offer does not apply: %v", err)
	}
	answer, err := pc.CreateAnswer(nil)
	if err != nil {
		fail("cannot create an answer: %v", err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(answer); err != nil {
		fail("cannot set the answer: %v", err)
	}
	printLocal(pc, gathered)
	var c *channel
	select {
	case c = <-channels:
	case <-time.After(stepTimeout):
		fail("no channel within a minute")
	}
	select {
	case <-c.open:
	case <-time.After(stepTimeout):
		fail("the channel did not open within a minute")
	}

	local, remote := fingerprints(pc)
	commit, err := hex.DecodeString(c.expect("sas_commit").Commit)
	if err != nil {
		fail("a malformed commitment")
	}
	mine := nonce()
	c.sendJSON(map[string]string{"type": "sas_nonce", "nonce": hex.EncodeToString(mine)})
	theirs, err := hex.DecodeString(c.expect("sas_reveal").Nonce)
	if err != nil || len(theirs) != 32 || hex.EncodeToString(commitment(theirs)) != hex.EncodeToString(commit) {
		fail("the sender's nonce does not match its commitment")
	}
	showSAS(sas(remote, local, theirs, mine))

	var files []fileEntry
	for {
		m := c.expect("offer")
		files = append(files, m.Files...)
		if !m.More {
			break
		}
	}
	for _, f := range files {
		if !safeName(f.Name) {
			c.sendJSON(map[string]string{"type": "reject", "reason": "unsafe name"})
			fail("the offer holds an unsafe name")
		}
	}
	c.sendJSON(map[string]string{"type": "accept"})
	var (
		out     *os.File
		digest  hash.Hash
		index   = -1
		written uint64
	)
	for {
		m := c.next()
		switch {
		case !m.isText:
			if out == nil || written+uint64(len(m.binary)) > files[index].Size {
				fail("bytes outside a file, or more than announced")
			}
			if _, err := out.Write(m.binary); err != nil {
				fail("cannot write: %v", err)
			}
			digest.Write(m.binary)
			written += uint64(len(m.binary))
		case m.Type == "file_start":
			if m.Index == nil || *m.Index != index+1 || *m.Index >= len(files) || m.Offset != 0 {
				fail("files out of order")
			}
			index = *m.Index
			target := filepath.Join(dir, filepath.FromSlash(files[index].Name))
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				fail("cannot create a folder: %v", err)
			}
			out, err = os.OpenFile(target+".partial", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				fail("cannot create a file: %v", err)
			}
			digest, written = sha256.New(), 0
		case m.Type == "file_end":
			if out == nil || m.Index == nil || *m.Index != index || written != files[index].Size {
				fail("a file ended early or late")
			}
			out.Sync()
			out.Close()
			out = nil
			target := filepath.Join(dir, filepath.FromSlash(files[index].Name))
			if hex.EncodeToString(digest.Sum(nil)) != strings.ToLower(m.SHA256) {
				os.Remove(target + ".partial")
				c.sendJSON(map[string]interface{}{"type": "file_failed", "index": index, "reason": "SHA-256 mismatch", "mismatch": true})
				fail("%s did not match its SHA-256", files[index].Name)
			}
			if _, err := os.Lstat(target); err == nil {
				fail("%s already exists", target)
			}
			if err := os.Rename(target+".partial", target); err != nil {
				fail("cannot name the file: %v", err)
			}
			c.sendJSON(map[string]interface{}{"type": "file_verified", "index": index})
		case m.Type == "done":
			fmt.Fprintf(os.Stderr, "Received %d file(s), every one verified\n", len(files))
			c.dc.Close()
			return
		default:
			fail("unexpected %q", m.Type)
		}
	}
}
