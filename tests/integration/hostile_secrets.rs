//! Provider error bodies never echo a secret (issue 24, item 10).
