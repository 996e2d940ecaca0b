//! Who a user is: the checked display name, the `{id, name, image}` object the cookie carries
//! and every frame names, and its serialized form shared by all of a socket's frames.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::Role;

/// How many avatar images ship under `static/avatars/`.
pub const AVATAR_COUNT: u64 = 12;

/// A display name: trimmed, 1 to 32 Unicode scalar values, no control characters.
/// Built only by [`UserName::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

/// Why a sign-in name was refused; the text is shown on the sign-in form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUserName {
    /// Nothing but white space.
    #[error("Please enter a name.")]
    Empty,
    /// Over [`UserName::MAX_CHARS`] characters.
    #[error("A name can be at most 32 characters long.")]
    TooLong,
    /// A control character (newline, tab, NUL, …).
    #[error("A name cannot contain control characters such as tabs or line breaks.")]
    ControlCharacter,
}

impl UserName {
    /// The longest name, in Unicode scalar values.
    pub const MAX_CHARS: usize = 32;

    /// Trims `raw` and checks it.
    ///
    /// # Errors
    /// [`InvalidUserName`] saying which rule the name broke.
    pub fn parse(raw: &str) -> Result<Self, InvalidUserName> {
        let name = raw.trim();
        if name.is_empty() {
            Err(InvalidUserName::Empty)
        } else if name.chars().count() > Self::MAX_CHARS {
            Err(InvalidUserName::TooLong)
        } else if name.chars().any(char::is_control) {
            Err(InvalidUserName::ControlCharacter)
        } else {
            Ok(Self(name.to_owned()))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The user object of the contract: `{"id", "name", "image"}`, plus `"role"` for moderators
/// and admins signed in by the host application's token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Made at sign-in: 128 random bits in hex, unique and unguessable; or the token's `sub`.
    pub id: String,
    /// The display name given at sign-in.
    pub name: String,
    /// The URL of the user's avatar image.
    pub image: String,
    /// Moderator or admin (from the token's `confab_role`); absent for everyone else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// A bot posting through the HTTP API (`"bot": true`); absent for people.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bot: bool,
}

impl User {
    /// A new user with a fresh random id and an avatar picked from the id.
    pub fn sign_up(name: UserName) -> Self {
        let id = format!("{:032x}", rand::random::<u128>());
        let avatar = u64::from_str_radix(&id[..8], 16).unwrap_or(0) % AVATAR_COUNT;
        Self {
            id,
            name: name.0,
            image: format!("/static/avatars/{avatar}.svg"),
            role: None,
            bot: false,
        }
    }

    /// The avatar a user without a picture of their own gets: one of the page's, picked from
    /// `id` so that it stays the same.
    pub fn default_image(id: &str) -> String {
        let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("/static/avatars/{}.svg", hash % AVATAR_COUNT)
    }
}

/// A user together with its JSON, serialized once when a socket opens and embedded, unparsed,
/// in every frame the socket causes. Shared by the socket task, presence and history: cloning
/// is one reference-count bump.
#[derive(Debug, Clone)]
pub struct Identity(Arc<IdentityInner>);

#[derive(Debug)]
struct IdentityInner {
    user: User,
    json: Arc<RawValue>,
}

impl Identity {
    /// Wraps `user`, serializing it once.
    pub fn new(user: User) -> Self {
        // A struct of three strings always serializes to valid JSON.
        let json = serde_json::value::to_raw_value(&user).expect("user serializes");
        Self(Arc::new(IdentityInner {
            user,
            json: Arc::from(json),
        }))
    }

    /// The user.
    pub fn user(&self) -> &User {
        &self.0.user
    }

    /// The user's id.
    pub fn id(&self) -> &str {
        &self.0.user.id
    }

    /// The user as JSON, shared.
    pub fn json(&self) -> &Arc<RawValue> {
        &self.0.json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_checked() {
        let long_accented = "é".repeat(32);
        let cases: [(&str, Result<&str, InvalidUserName>); 10] = [
            ("ann", Ok("ann")),
            ("  ann  ", Ok("ann")),
            ("王小明", Ok("王小明")),
            ("🦀 crab", Ok("🦀 crab")),
            (&long_accented, Ok(&long_accented)),
            ("", Err(InvalidUserName::Empty)),
            ("   \t ", Err(InvalidUserName::Empty)),
            (
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                Err(InvalidUserName::TooLong),
            ),
            ("an\u{0}n", Err(InvalidUserName::ControlCharacter)),
            ("a\u{7f}", Err(InvalidUserName::ControlCharacter)),
        ];
        for (raw, expected) in cases {
            let parsed = UserName::parse(raw);
            assert_eq!(
                parsed.as_ref().map(UserName::as_str).map_err(|e| *e),
                expected,
                "name {raw:?}"
            );
        }
    }

    #[test]
    fn a_name_of_thirty_two_emoji_is_accepted_though_it_is_128_bytes() {
        assert!(UserName::parse(&"😀".repeat(32)).is_ok());
        assert_eq!(
            UserName::parse(&"😀".repeat(33)),
            Err(InvalidUserName::TooLong)
        );
    }

    #[test]
    fn new_users_get_distinct_unguessable_ids_and_a_shipped_avatar() {
        let a = User::sign_up(UserName::parse("ann").unwrap());
        let b = User::sign_up(UserName::parse("ann").unwrap());
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 32);
        let n: u64 = a
            .image
            .trim_start_matches("/static/avatars/")
            .trim_end_matches(".svg")
            .parse()
            .unwrap();
        assert!(n < AVATAR_COUNT);
    }

    #[test]
    fn identity_json_is_the_contract_user_object() {
        let identity = Identity::new(User {
            id: "u1".into(),
            name: "a\"b".into(),
            image: "/x.svg".into(),
            role: None,
            bot: false,
        });
        assert_eq!(
            identity.json().get(),
            r#"{"id":"u1","name":"a\"b","image":"/x.svg"}"#
        );
    }
}
