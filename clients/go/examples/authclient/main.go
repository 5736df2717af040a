// Command authclient calls an upstream API with a token of a tokend
// connection: the client's HTTPClient sets Authorization: Bearer and, on a
// 401, has tokend refresh the token and retries once.
//
//	go run ./examples/authclient -connection sandbox-portal-123 -url http://127.0.0.1:50052/api/me
//
// TOKEND_ENDPOINT (default 127.0.0.1:50051) and TOKEND_API_KEY are read as
// by the tokend CLI. Exit codes: 0 a 2xx answer, 1 any other failure, 4 the
// connection needs its customer to reconnect.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	tokend "github.com/tokend-dev/tokend/clients/go"
)

func main() {
	endpoint := os.Getenv("TOKEND_ENDPOINT")
	if endpoint == "" {
		endpoint = "127.0.0.1:50051"
	}
	flag.StringVar(&endpoint, "tokend", endpoint, "tokend's gRPC endpoint")
	connection := flag.String("connection", "", "the connection whose token to send, e.g. sandbox-portal-123")
	url := flag.String("url", "http://127.0.0.1:50052/api/me", "the upstream API to call")
	flag.Parse()
	if *connection == "" {
		fmt.Fprintln(os.Stderr, "authclient: -connection is required")
		os.Exit(2)
	}
	var opts []tokend.Option
	if key := os.Getenv("TOKEND_API_KEY"); key != "" {
		opts = append(opts, tokend.WithAPIKey(key))
	}

	client, err := tokend.New(endpoint, opts...)
	if err != nil {
		fail(err)
	}
	defer client.Close()
	response, err := client.HTTPClient(*connection).Get(*url)
	if err != nil {
		fail(err)
	}
	defer response.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(response.Body, 1<<20))
	fmt.Printf("%s\n%s\n", response.Status, body)
	if response.StatusCode/100 != 2 {
		os.Exit(1)
	}
}

func fail(err error) {
	var reconnect *tokend.ReconnectRequiredError
	if errors.As(err, &reconnect) {
		fmt.Fprintf(os.Stderr, "authclient: connection %s needs its customer to reconnect (cause %s)\n",
			reconnect.ConnectionID, reconnect.Cause)
		os.Exit(4)
	}
	fmt.Fprintln(os.Stderr, "authclient:", err)
	os.Exit(1)
}
