//! Config ranges, restore and store copy (issue 24, items 12 and 13).
