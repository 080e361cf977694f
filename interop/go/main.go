// Command spiffe-interop is a test peer, not part of agentmesh: a workload written with
// go-spiffe v2 (the most used SPIFFE client library), in the shape of the Ephemos echo server
// and client, run against a real agentmesh node by crates/agentmesh/tests/gospiffe.rs.
//
// It waits for one line on stdin before touching the Workload API, so the test can register
// the process with the node first, then prints one JSON object per line.
//
//	spiffe-interop x509 WAIT_ROTATION(0|1)
//	spiffe-interop jwt AUDIENCE
//	spiffe-interop echo-server ADDR ALLOWED_CLIENT_ID
//	spiffe-interop echo-client ADDR SERVER_ID WRONG_SERVER_ID
//
// The socket is $SPIFFE_ENDPOINT_SOCKET, as go-spiffe reads it.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// patience bounds every wait, so a broken node fails the test instead of hanging it.
const patience = 60 * time.Second

func main() {
	if len(os.Args) < 2 {
		fail("usage: spiffe-interop x509|jwt|echo-server|echo-client ...")
	}
	// The test registers this pid with the node, then says go.
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		fail("no go line on stdin: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*patience)
	defer cancel()
	switch os.Args[1] {
	case "x509":
		x509(ctx, arg(2) == "1")
	case "jwt":
		jwt(ctx, arg(2))
	case "echo-server":
		echoServer(ctx, arg(2), arg(3))
	case "echo-client":
		echoClient(ctx, arg(2), arg(3), arg(4))
	default:
		fail("unknown command %q", os.Args[1])
	}
}

func arg(i int) string {
	if len(os.Args) <= i {
		fail("missing argument %d", i)
	}
	return os.Args[i]
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "spiffe-interop: "+format+"\n", a...)
	os.Exit(1)
}

func say(v map[string]any) {
	b, err := json.Marshal(v)
	if err != nil {
		fail("json: %v", err)
	}
	fmt.Println(string(b))
}

func source(ctx context.Context) *workloadapi.X509Source {
	wait, cancel := context.WithTimeout(ctx, patience)
	defer cancel()
	src, err := workloadapi.NewX509Source(wait)
	if err != nil {
		fail("X509Source: %v", err)
	}
	return src
}

// x509 prints the SVID an X509Source gets and, when asked, waits on the same open stream for
// the node's rotation and prints the new serial.
func x509(ctx context.Context, waitRotation bool) {
	src := source(ctx)
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		fail("GetX509SVID: %v", err)
	}
	bundle, err := src.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil {
		fail("bundle: %v", err)
	}
	first := svid.Certificates[0].SerialNumber.String()
	out := map[string]any{
		"spiffe_id": svid.ID.String(),
		"serial":    first,
		"chain_len": len(svid.Certificates),
		"roots":     len(bundle.X509Authorities()),
		"not_after": svid.Certificates[0].NotAfter.Unix(),
	}
	if waitRotation {
		deadline := time.Now().Add(patience)
		for {
			now, err := src.GetX509SVID()
			if err == nil && now.Certificates[0].SerialNumber.String() != first {
				out["rotated_serial"] = now.Certificates[0].SerialNumber.String()
				out["rotated_id"] = now.ID.String()
				break
			}
			if time.Now().After(deadline) {
				fail("no rotation within %v", patience)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	say(out)
}

// jwt fetches a JWT-SVID with a JWTSource and has the node validate it.
func jwt(ctx context.Context, audience string) {
	wait, cancel := context.WithTimeout(ctx, patience)
	defer cancel()
	src, err := workloadapi.NewJWTSource(wait)
	if err != nil {
		fail("JWTSource: %v", err)
	}
	defer src.Close()
	token, err := src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience})
	if err != nil {
		fail("FetchJWTSVID: %v", err)
	}
	// Verified here against the JWT bundle the source follows, and by the node.
	local, err := jwtsvid.ParseAndValidate(token.Marshal(), src, []string{audience})
	if err != nil {
		fail("ParseAndValidate: %v", err)
	}
	byNode, err := workloadapi.ValidateJWTSVID(ctx, token.Marshal(), audience)
	if err != nil {
		fail("ValidateJWTSVID: %v", err)
	}
	_, wrongAudience := workloadapi.ValidateJWTSVID(ctx, token.Marshal(), "someone-else")
	say(map[string]any{
		"spiffe_id":              token.ID.String(),
		"validated_locally":      local.ID.String(),
		"validated_by_node":      byNode.ID.String(),
		"wrong_audience_refused": wrongAudience != nil,
		"audience":               token.Audience,
	})
}

// echoServer answers every line with "echo:" and the line, to the one client ID it allows,
// until stdin closes.
func echoServer(ctx context.Context, addr, allowed string) {
	clientID, err := spiffeid.FromString(allowed)
	if err != nil {
		fail("client ID: %v", err)
	}
	src := source(ctx)
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		fail("GetX509SVID: %v", err)
	}
	ln, err := spiffetls.ListenWithMode(ctx, "tcp", addr,
		spiffetls.MTLSServerWithSource(tlsconfig.AuthorizeID(clientID), src))
	if err != nil {
		fail("listen: %v", err)
	}
	defer ln.Close()
	say(map[string]any{"spiffe_id": svid.ID.String(), "listening": addr})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		_ = ln.Close()
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go serve(conn)
	}
}

func serve(conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(patience))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return // a refused handshake ends here too
	}
	peer, _ := spiffetls.PeerIDFromConn(conn)
	_, _ = fmt.Fprintf(conn, "echo:%s from %s\n", line[:len(line)-1], peer)
}

// echoClient dials the server pinning its ID, then dials again pinning a wrong ID.
func echoClient(ctx context.Context, addr, server, wrong string) {
	serverID, err := spiffeid.FromString(server)
	if err != nil {
		fail("server ID: %v", err)
	}
	wrongID, err := spiffeid.FromString(wrong)
	if err != nil {
		fail("wrong ID: %v", err)
	}
	src := source(ctx)
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		fail("GetX509SVID: %v", err)
	}
	out := map[string]any{"spiffe_id": svid.ID.String()}
	reply, err := exchange(ctx, src, addr, serverID)
	if err != nil {
		out["error"] = err.Error()
	} else {
		out["reply"] = reply
	}
	_, err = exchange(ctx, src, addr, wrongID)
	out["wrong_server_refused"] = err != nil
	if err != nil {
		out["wrong_server_error"] = err.Error()
	}
	say(out)
}

func exchange(ctx context.Context, src *workloadapi.X509Source, addr string, id spiffeid.ID) (string, error) {
	dial, cancel := context.WithTimeout(ctx, patience)
	defer cancel()
	conn, err := spiffetls.DialWithMode(dial, "tcp", addr,
		spiffetls.MTLSClientWithSource(tlsconfig.AuthorizeID(id), src))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(patience))
	if _, err := fmt.Fprintf(conn, "hello\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", err
	}
	return line[:len(line)-1], nil
}
