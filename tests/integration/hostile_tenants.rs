//! Tenants: narrow listings, audited probes, no silent replace, bounded installs (issue 24, items 6, 7, 8 and the install cap).
