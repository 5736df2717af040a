//! The console login: rate limit, audit, Host check (issue 24, item 9).
