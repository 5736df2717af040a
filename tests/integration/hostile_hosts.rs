//! Templated hosts cannot be steered (issue 24, item 1).
