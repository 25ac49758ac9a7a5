//! What an audit entry says: the action, its outcome, the event a caller records and the entry
//! it becomes, and the filter a listing applies.

use serde::{Deserialize, Serialize};

use super::{DETAIL_CAP, NAME_CAP, REASON_CAP};

/// What was done or asked. Serialized in kebab-case (`member-admit`, `federated-aggregate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// An invitation issued (inviter's node).
    Invite,
    /// This node joined a mesh with an invitation (newcomer's node).
    Join,
    /// A newcomer admitted with an invitation, or refused (inviter's node; actor: the newcomer).
    MemberAdmit,
    /// A member's role changed.
    RoleChange,
    /// A member removed from the mesh.
    MemberRemove,
    /// An organization's keys rotated.
    KeyRotate,
    /// A grant issued on a dataset this node owns.
    Grant,
    /// A grant revoked (by an admin, or expired and revoked by the owner's sweep).
    Revoke,
    /// An app registered.
    AppAdd,
    /// An app removed.
    AppRemove,
    /// An app's token rotated.
    AppRotate,
    /// An app's rights changed.
    AppRights,
    /// The admin token rotated.
    AdminRotateToken,
    /// A dataset created.
    DatasetCreate,
    /// A computation flow declared.
    FlowAdd,
    /// A computation flow removed.
    FlowRemove,
    /// A federated aggregate answered (or refused) for another organization's app.
    FederatedAggregate,
    /// A pushed-down search answered (or refused) for another organization's app.
    Search,
    /// Envelopes of a sealed dataset served to a member organization holding its keys, one entry
    /// per fetch request (or a fetch refused).
    Fetch,
    /// Reading records, refused at the API.
    Read,
    /// Writing records, refused at the API.
    Write,
    /// A view query refused at the API, or a question from a peer that does not decode.
    Query,
    /// A catch-up request from a peer, refused.
    Sync,
    /// Envelopes pushed or relayed by a peer, refused (bad input, or no write authority).
    Push,
    /// An author found signing two histories of one dataset (actor: its organization); its
    /// envelopes from the fork on are set aside.
    Equivocation,
    /// Any other API request, refused.
    Request,
}

impl Action {
    /// Every action, in declaration order.
    pub const ALL: [Action; 26] = [
        Action::Invite,
        Action::Join,
        Action::MemberAdmit,
        Action::RoleChange,
        Action::MemberRemove,
        Action::KeyRotate,
        Action::Grant,
        Action::Revoke,
        Action::AppAdd,
        Action::AppRemove,
        Action::AppRotate,
        Action::AppRights,
        Action::AdminRotateToken,
        Action::DatasetCreate,
        Action::FlowAdd,
        Action::FlowRemove,
        Action::FederatedAggregate,
        Action::Search,
        Action::Fetch,
        Action::Read,
        Action::Write,
        Action::Query,
        Action::Sync,
        Action::Push,
        Action::Equivocation,
        Action::Request,
    ];

    /// The kebab-case name, as serialized.
    pub fn as_str(self) -> &'static str {
        use Action::*;
        match self {
            Invite => "invite",
            Join => "join",
            MemberAdmit => "member-admit",
            RoleChange => "role-change",
            MemberRemove => "member-remove",
            KeyRotate => "key-rotate",
            Grant => "grant",
            Revoke => "revoke",
            AppAdd => "app-add",
            AppRemove => "app-remove",
            AppRotate => "app-rotate",
            AppRights => "app-rights",
            AdminRotateToken => "admin-rotate-token",
            DatasetCreate => "dataset-create",
            FlowAdd => "flow-add",
            FlowRemove => "flow-remove",
            FederatedAggregate => "federated-aggregate",
            Search => "search",
            Fetch => "fetch",
            Read => "read",
            Write => "write",
            Query => "query",
            Sync => "sync",
            Push => "push",
            Equivocation => "equivocation",
            Request => "request",
        }
    }

    /// The action named `s` (kebab-case), if any.
    pub fn parse(s: &str) -> Option<Action> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether it was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Done (or answered).
    Ok,
    /// Refused; the entry's `reason` says why.
    Refused,
}

/// What a caller records; [`super::Log::record`] makes it an [`Entry`]. Build it with
/// [`Event::ok`] or [`Event::refused`], then [`Event::dataset`] and [`Event::detail`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Who: `org/app`, or `org` for a peer node (or a peer id when it is no member).
    pub actor: String,
    /// What.
    pub action: Action,
    /// On which dataset (`owner/name`), if one.
    pub dataset: Option<String>,
    /// Done or refused.
    pub outcome: Outcome,
    /// Why it was refused.
    pub reason: Option<String>,
    /// A short free-form detail (grantee and rights, group count, envelope range).
    pub detail: String,
}

impl Event {
    /// `actor` did `action`.
    pub fn ok(actor: impl Into<String>, action: Action) -> Self {
        Self {
            actor: actor.into(),
            action,
            dataset: None,
            outcome: Outcome::Ok,
            reason: None,
            detail: String::new(),
        }
    }

    /// `actor` was refused `action` because of `reason`.
    pub fn refused(actor: impl Into<String>, action: Action, reason: impl Into<String>) -> Self {
        Self {
            reason: Some(reason.into()),
            outcome: Outcome::Refused,
            ..Self::ok(actor, action)
        }
    }

    /// The same event, refused because of `reason` (for events built before the outcome is
    /// known).
    pub fn refuse(mut self, reason: impl Into<String>) -> Self {
        self.outcome = Outcome::Refused;
        self.reason = Some(reason.into());
        self
    }

    /// The dataset concerned.
    pub fn dataset(mut self, id: impl ToString) -> Self {
        self.dataset = Some(id.to_string());
        self
    }

    /// A short detail (capped at [`DETAIL_CAP`] bytes when recorded).
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// The event with every field cut to its cap.
    pub(super) fn capped(self) -> Self {
        Self {
            actor: cap(self.actor, NAME_CAP),
            dataset: self.dataset.map(|d| cap(d, NAME_CAP)),
            reason: self.reason.map(|r| cap(r, REASON_CAP)),
            detail: cap(self.detail, DETAIL_CAP),
            ..self
        }
    }

    /// The organization part of the actor (before the first `/`).
    pub fn org(&self) -> &str {
        org_of(&self.actor)
    }
}

/// The organization part of an actor.
pub(super) fn org_of(actor: &str) -> &str {
    actor.split('/').next().unwrap_or(actor)
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub(super) fn cap(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// One entry of the log, as stored and listed: the event recorded, where and when it was
/// appended, and its links in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When it was appended, ms since the epoch (never less than the entry before).
    pub time: u64,
    /// What was recorded (its fields appear at the entry's top level in JSON).
    #[serde(flatten)]
    pub event: Event,
    /// Hex SHA-256 hash of the entry before (zeros for the first entry ever).
    pub prev: String,
    /// Hex SHA-256 over `prev` and this entry's canonical bytes.
    pub hash: String,
}

/// Which entries a listing returns. Times are ms since the epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only entries at or after this time.
    pub since: Option<u64>,
    /// Only entries before this time.
    pub until: Option<u64>,
    /// Only entries whose actor belongs to this organization.
    pub org: Option<String>,
    /// Only this action.
    pub action: Option<Action>,
    /// Only entries about this dataset (`owner/name`).
    pub dataset: Option<String>,
    /// Only this outcome (`refused`: every refusal).
    pub outcome: Option<Outcome>,
    /// Only entries after this seq; the listing then pages forward (the oldest `limit` after it)
    /// instead of returning the newest `limit`.
    pub after: Option<u64>,
    /// Most entries returned (default [`super::DEFAULT_LIST`], at most [`super::MAX_LIST`]).
    pub limit: Option<usize>,
}

impl Filter {
    /// Whether `e` passes every condition except `limit`.
    pub fn matches(&self, entry: &Entry) -> bool {
        let e = &entry.event;
        self.since.is_none_or(|t| entry.time >= t)
            && self.until.is_none_or(|t| entry.time < t)
            && self.after.is_none_or(|s| entry.seq > s)
            && self.action.is_none_or(|a| e.action == a)
            && self.outcome.is_none_or(|o| e.outcome == o)
            && self.org.as_deref().is_none_or(|o| org_of(&e.actor) == o)
            && self
                .dataset
                .as_deref()
                .is_none_or(|d| e.dataset.as_deref() == Some(d))
    }

    /// The number of entries to return.
    pub fn limit(&self) -> usize {
        self.limit
            .unwrap_or(super::DEFAULT_LIST)
            .clamp(1, super::MAX_LIST)
    }
}
