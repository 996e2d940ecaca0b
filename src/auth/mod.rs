//! Who is asking: the signed user cookie, the `Origin` check, and the ways to sign in and out.
//!
//! - [`cookie`]: the signed `name` cookie ([`CookieCodec`]).
//! - [`jwt`]: sign-in with the host application's token ([`TokenVerifier`]).
//! - [`origin`]: which sites may open sockets and post forms ([`OriginPolicy`]).
//! - [`role`]: moderators and admins.
//! - [`signin`]: the name form, and sign-out.

pub mod cookie;
pub mod jwt;
pub mod origin;
pub mod role;
pub mod signin;

pub use cookie::{COOKIE_MAX_AGE, COOKIE_NAME, CookieCodec};
pub use jwt::{TokenVerifier, get_token_signin};
pub use origin::OriginPolicy;
pub use role::Role;
pub use signin::{SigninForm, get_signout, post_signin, post_signout, show_signin};
