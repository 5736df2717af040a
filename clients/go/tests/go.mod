module github.com/tokend-dev/tokend/clients/go/tests

go 1.19

require (
	github.com/tokend-dev/tokend/clients/go v0.0.0-00010101000000-000000000000
	google.golang.org/genproto v0.0.0-20200526211855-cb27e3aa2013
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)

require (
	github.com/golang/protobuf v1.5.2 // indirect
	golang.org/x/net v0.7.0 // indirect
	golang.org/x/sys v0.5.0 // indirect
	golang.org/x/text v0.7.0 // indirect
)

// The tests use the SDK as a user's module does: as a dependency.
replace github.com/tokend-dev/tokend/clients/go => ../
