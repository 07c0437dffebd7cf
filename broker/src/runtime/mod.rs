//! The tokio runtime around the sans-IO core: listeners, connection tasks, the shared
//! state with its durability gate, the ticker and shutdown.

mod arrival;
pub(crate) mod auth;
pub(crate) mod connection;
mod doze;
mod held;
mod http;
mod jwt;
mod ports;
pub(crate) mod server;
pub(crate) mod shared;
pub(crate) mod table;
mod tls;

pub use auth::passwd;
pub use server::run;
