//! braid-webhook: the admission webhook that injects the Braid proxy into meshed pods.
//! Its work is issue 3 (sidecar injection); this crate holds nothing yet.
