//! ETSI GS QKD 014 JSON types (filled in by the ETSI work).
