//! Watch streams that never read, and checkpoints (issue 24, items 5 and 14).
