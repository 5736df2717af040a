//! Tampered stored metadata cannot redirect a refresh token (issue 24, item 2).
