//! Access control: registered clients, OAuth 2.0 client credentials in the
//! SMART Backend Services style, SMART v2 scopes, and the one access table
//! that guards every route of a node and of the hub. Pure apart from reading
//! the clients file and the token key.

pub mod clients;
pub mod oidc;
pub mod policy;
pub mod scopes;
pub mod sessions;
pub mod tokens;
pub mod users;

pub use clients::{Client, Clients, Role};
pub use policy::{decide, Facts, RouteRule, Rule, Server, HUB_ROUTES, NODE_ROUTES};
pub use scopes::Scope;
pub use tokens::{Authority, OAuthError, Principal};
pub use users::{Accounts, People, Person, User};
