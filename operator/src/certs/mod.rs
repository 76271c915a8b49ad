//! The operator's certificate kit, shared by the mesh CA (identity/) and the admission webhook's
//! certificates (webhook/):
//!
//! - x509.rs: certificates parsed once and compared (validity, signature, key), and issued.
//! - rotation.rs: the pure plan / apply / bundle / next-change machinery, generic over a
//!   [`Rotation`] that says which certificates exist and when each is replaced.
//! - secret.rs: the Secrets they are kept in, written with server-side apply and owned by a
//!   Service of the Helm chart.
//! - shell.rs: the loop around one controller's passes (sleep until the next change, wake on
//!   events, back off on failures).

pub mod rotation;
pub mod secret;
pub mod shell;
pub mod x509;

pub use rotation::Rotation;
pub use x509::{Cert, KeyedCert, Validity};
