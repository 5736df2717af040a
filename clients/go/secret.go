package tokend

import "fmt"

// Secret holds an access token, refresh token, authorization code or API
// key. It prints as [redacted] with every fmt verb and in JSON, also when
// nested in a struct, so logging a Token or an InstallRequest never leaks it.
// Reveal returns the value, for an Authorization header only.
type Secret struct {
	// Behind a pointer: fmt prints a pointer nested in an unexported field
	// as an address, never as the string it points to.
	p *string
}

// NewSecret wraps a secret value.
func NewSecret(value string) Secret { return Secret{p: &value} }

// Reveal returns the secret itself.
func (s Secret) Reveal() string {
	if s.p == nil {
		return ""
	}
	return *s.p
}

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.Reveal() == "" }

const redacted = "[redacted]"

// String implements fmt.Stringer without revealing the secret.
func (s Secret) String() string { return redacted }

// GoString implements fmt.GoStringer without revealing the secret.
func (s Secret) GoString() string { return `tokend.Secret("` + redacted + `")` }

// Format implements fmt.Formatter: every verb prints [redacted].
func (s Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// MarshalJSON implements json.Marshaler without revealing the secret.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText implements encoding.TextMarshaler without revealing the secret.
func (s Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }
