//! Who is asking: the signed user cookie, the `Origin` check, and the ways to sign in and out.
//!
//! - [`cookie`]: the signed `name` cookie ([`CookieCodec`]).
//! - [`origin`]: which sites may open sockets and post forms ([`OriginPolicy`]).
//! - [`signin`]: the name form, and sign-out.

pub mod cookie;
pub mod origin;
pub mod signin;

pub use cookie::{COOKIE_MAX_AGE, COOKIE_NAME, CookieCodec};
pub use origin::OriginPolicy;
pub use signin::{SigninForm, get_signout, post_signin, post_signout, show_signin};
