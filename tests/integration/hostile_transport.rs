//! Transport lockout and starvation (issue 24, items 3, 4 and 11).
