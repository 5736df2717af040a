// Package tokend is the Go client of tokend, an OAuth2 token broker: services
// ask it over gRPC for a valid access token of a connection (one OAuth grant)
// and never hold refresh tokens.
//
//	client, err := tokend.New("127.0.0.1:50051", tokend.WithAPIKey(key))
//	api := client.HTTPClient("hubspot-portal-123") // Authorization: Bearer, refresh-and-retry on 401
//	resp, err := api.Get("https://api.hubapi.com/crm/v3/objects/contacts")
//
// Token serves tokens from a local cache with one tokend call per connection
// however many goroutines ask; GetToken, ForceRefresh, Install,
// GetConnection, ListConnections and DeleteConnection wrap the RPCs with a
// deadline (10 s unless the context has one) and retries while tokend
// restarts; Watch and WatchAll follow one connection or the whole event log
// and subscribe again by themselves. Errors are typed (*NotFoundError,
// *ReconnectRequiredError, *UnavailableError...; see errors.go), enums are
// names ("ACTIVE", "RECONNECT_REQUIRED"), and secrets print as [redacted].
//
// The generated gRPC stubs are in the tokendv1 package.
package tokend
