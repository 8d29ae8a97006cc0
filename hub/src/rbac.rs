//! Who may do what: Argo CD's RBAC, read from an unchanged `argocd-rbac-cm`.
//!
//! A policy is `p, subject, resource, action, object, effect` lines and
//! `g, user-or-group, role` lines (`policy.csv`), a role every authenticated user has
//! (`policy.default`), Argo CD's built-in `role:admin` and `role:readonly`, and the
//! roles AppProjects define (`proj:PROJECT:ROLE`). Objects and actions match as Argo
//! CD's globs (`*` matches anything, `/` included); a matching deny beats any allow.

use std::collections::{BTreeMap, BTreeSet};

use globset::Glob;
use serde_json::Value;

use crate::app::AppProject;

#[cfg(test)]
mod tests;

/// The resources a policy line may name.
pub const RESOURCES: &[&str] = &[
    "applications",
    "applicationsets",
    "clusters",
    "repositories",
    "projects",
    "accounts",
    "certificates",
    "gpgkeys",
    "logs",
    "exec",
    "extensions",
];

/// The actions a policy line may name, besides `action/...` and `*`.
pub const ACTIONS: &[&str] = &[
    "get", "create", "update", "delete", "sync", "override", "invoke",
];

/// Argo CD's built-in roles, as policy lines.
const BUILT_IN: &str = "\
p, role:readonly, applications, get, */*, allow
p, role:readonly, applicationsets, get, */*, allow
p, role:readonly, certificates, get, *, allow
p, role:readonly, clusters, get, *, allow
p, role:readonly, repositories, get, *, allow
p, role:readonly, projects, get, *, allow
p, role:readonly, accounts, get, *, allow
p, role:readonly, gpgkeys, get, *, allow
p, role:readonly, logs, get, */*, allow
p, role:admin, *, *, *, allow
g, role:admin, role:readonly
";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A policy line does not parse; the line number is 1-based.
    #[error("{origin}:{line}: {message}")]
    Line {
        origin: String,
        line: usize,
        message: String,
    },
    /// The ConfigMap is not an `argocd-rbac-cm` Flotilla can read.
    #[error("{origin}: {message}")]
    ConfigMap { origin: String, message: String },
    /// An AppProject role breaks Argo CD's rules for project roles.
    #[error("{origin}: {message}")]
    ProjectRole { origin: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    subject: String,
    resource: String,
    action: String,
    object: String,
    effect: Effect,
}

/// A parsed policy, ready to answer [`Policy::enforce`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
    /// Subject (user, group or role) to the roles it has.
    roles: BTreeMap<String, BTreeSet<String>>,
    default_role: Option<String>,
}

impl Policy {
    /// Reads `policy.csv` text, with `policy.default` if the ConfigMap sets one.
    pub fn parse(csv: &str, default_role: Option<&str>, origin: &str) -> Result<Self> {
        let mut policy = Self {
            default_role: default_role
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_owned),
            ..Self::default()
        };
        policy.add_lines(BUILT_IN, "built-in policy")?;
        policy.add_lines(csv, origin)?;
        Ok(policy)
    }

    /// Reads an `argocd-rbac-cm` ConfigMap as Argo CD users keep it in Git.
    pub fn from_configmap_yaml(yaml: &str, origin: &str) -> Result<Self> {
        let bad = |message: String| Error::ConfigMap {
            origin: origin.to_owned(),
            message,
        };
        let doc: Value = serde_saphyr::from_str(yaml).map_err(|e| bad(e.to_string()))?;
        if doc.get("kind").and_then(Value::as_str) != Some("ConfigMap") {
            return Err(bad("is not a ConfigMap".to_owned()));
        }
        let data = doc.get("data").cloned().unwrap_or(Value::Null);
        let text = |key: &str| data.get(key).and_then(Value::as_str).map(str::to_owned);
        let mut csv = text("policy.csv").unwrap_or_default();
        // Argo CD also merges every `policy.<name>.csv` key, in key order.
        if let Some(map) = data.as_object() {
            for (key, value) in map {
                if key.starts_with("policy.") && key.ends_with(".csv") && key != "policy.csv" {
                    csv.push('\n');
                    csv.push_str(value.as_str().unwrap_or_default());
                }
            }
        }
        if let Some(mode) = text("policy.matchMode").filter(|m| m != "glob") {
            return Err(bad(format!(
                "policy.matchMode {mode:?} is not supported by Flotilla; only glob is"
            )));
        }
        Self::parse(&csv, text("policy.default").as_deref(), origin)
    }

    /// Adds the roles an AppProject defines, after [`check_project_roles`]: a
    /// project's roles either all hold or none is added.
    pub fn add_project_roles(&mut self, project: &AppProject) -> Result<()> {
        let name = project.name();
        let mut rules = Vec::new();
        let mut grants = Vec::new();
        for role in &project.spec.roles {
            let subject = format!("proj:{name}:{}", role.name);
            let origin = format!("AppProject {name} role {}", role.name);
            check_role_name(name, &role.name, &origin)?;
            for (i, line) in role.policies.iter().enumerate() {
                rules.push(project_rule(name, &role.name, line).map_err(|message| {
                    Error::Line {
                        origin: origin.clone(),
                        line: i + 1,
                        message,
                    }
                })?);
            }
            for group in &role.groups {
                let group = project_group(group).map_err(|message| Error::ProjectRole {
                    origin: origin.clone(),
                    message,
                })?;
                grants.push((group, subject.clone()));
            }
        }
        self.rules.extend(rules);
        for (group, subject) in grants {
            self.add_grouping(&group, &subject);
        }
        Ok(())
    }

    /// Gives `member` the role `role`, as a `g` line would.
    pub fn add_grouping(&mut self, member: &str, role: &str) {
        self.roles
            .entry(member.to_owned())
            .or_default()
            .insert(role.to_owned());
    }

    fn add_lines(&mut self, text: &str, origin: &str) -> Result<()> {
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |message: String| Error::Line {
                origin: origin.to_owned(),
                line: index + 1,
                message,
            };
            let fields = split_csv(line).map_err(bad)?;
            match fields.first().map(String::as_str) {
                Some("p") => {
                    let [_, subject, resource, action, object, effect] = &fields[..] else {
                        return Err(bad(format!(
                            "a p line has 6 fields (p, subject, resource, action, object, effect), not {}",
                            fields.len()
                        )));
                    };
                    if resource != "*" && !RESOURCES.contains(&resource.as_str()) {
                        return Err(bad(format!("unknown resource {resource:?}")));
                    }
                    if !(action == "*"
                        || action.starts_with("action/")
                        || ACTIONS.contains(&action.as_str()))
                    {
                        return Err(bad(format!("unknown action {action:?}")));
                    }
                    let effect = match effect.as_str() {
                        "allow" => Effect::Allow,
                        "deny" => Effect::Deny,
                        other => {
                            return Err(bad(format!(
                                "effect must be allow or deny, not {other:?}"
                            )));
                        }
                    };
                    self.rules.push(Rule {
                        subject: subject.clone(),
                        resource: resource.clone(),
                        action: action.clone(),
                        object: object.clone(),
                        effect,
                    });
                }
                Some("g") => {
                    let [_, member, role] = &fields[..] else {
                        return Err(bad(format!(
                            "a g line has 3 fields (g, user-or-group, role), not {}",
                            fields.len()
                        )));
                    };
                    self.roles
                        .entry(member.clone())
                        .or_default()
                        .insert(role.clone());
                }
                Some(other) => return Err(bad(format!("lines start with p or g, not {other:?}"))),
                None => {}
            }
        }
        Ok(())
    }

    /// Whether `user`, who belongs to `groups`, may do `action` on `object` of
    /// `resource`. Objects of applications and logs are `PROJECT/APP`.
    pub fn enforce(
        &self,
        user: &str,
        groups: &[String],
        resource: &str,
        action: &str,
        object: &str,
    ) -> bool {
        let subjects = self.subjects(user, groups);
        let mut allowed = false;
        for rule in self
            .rules
            .iter()
            .filter(|r| subjects.contains(r.subject.as_str()))
        {
            if glob(&rule.resource, resource)
                && glob(&rule.action, action)
                && glob(&rule.object, object)
            {
                match rule.effect {
                    Effect::Deny => return false,
                    Effect::Allow => allowed = true,
                }
            }
        }
        allowed
    }

    /// The first role, group or grant an account `user` in `groups` would hold
    /// that `grantor` (in `grantor_groups`) does not, if any. An account holds its
    /// groups, whatever policy lines name its user name, and every role those
    /// reach; whoever creates one must hold all of that already, or be allowed
    /// everything, so making an account never raises anyone's rights.
    pub fn beyond_grantor(
        &self,
        grantor: &str,
        grantor_groups: &[String],
        user: &str,
        groups: &[String],
    ) -> Option<String> {
        if self.enforce(grantor, grantor_groups, "*", "*", "*") {
            return None;
        }
        let theirs = self.subjects(grantor, grantor_groups);
        let named =
            |s: &str| self.rules.iter().any(|r| r.subject == s) || self.roles.contains_key(s);
        self.subjects(user, groups)
            .into_iter()
            .find(|s| !theirs.contains(s) && (*s != user || named(s)))
            .map(str::to_owned)
    }

    /// The user, its groups, the default role, and every role they reach through g
    /// lines, transitively.
    fn subjects<'a>(&'a self, user: &'a str, groups: &'a [String]) -> BTreeSet<&'a str> {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut queue: Vec<&str> = std::iter::once(user)
            .chain(groups.iter().map(String::as_str))
            .chain(self.default_role.as_deref())
            .collect();
        while let Some(subject) = queue.pop() {
            if seen.insert(subject) {
                queue.extend(
                    self.roles
                        .get(subject)
                        .into_iter()
                        .flatten()
                        .map(String::as_str),
                );
            }
        }
        seen
    }
}

/// Whether an AppProject's roles hold, as Argo CD checks them when a project is
/// created or updated: a role's name is a plain word, each of its policies is one
/// `p, proj:PROJECT:ROLE, RESOURCE, ACTION, PROJECT/APP-GLOB, allow|deny` line
/// about that project's own apps, and its groups are names, not lines.
pub fn check_project_roles(project: &AppProject) -> Result<()> {
    Policy::default().add_project_roles(project)
}

/// A role name is one word, so `proj:PROJECT:ROLE` names one role only.
fn check_role_name(project: &str, role: &str, origin: &str) -> Result<()> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let bytes = role.as_bytes();
    let ok = !role.is_empty()
        && role.len() <= 63
        && bytes.iter().all(|b| word(*b))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if ok {
        Ok(())
    } else {
        Err(Error::ProjectRole {
            origin: origin.to_owned(),
            message: format!(
                "role name {role:?} of project {project} must be letters, digits, '-' and '_', \
                 starting and ending with a letter or digit, at most 63 characters"
            ),
        })
    }
}

/// The resources a project role may grant: those whose objects are
/// `PROJECT/NAME`, as Argo CD allows them.
const PROJECT_RESOURCES: &[&str] = &["applications", "applicationsets", "logs", "exec"];

/// One project role policy line as a rule, or why it is refused. Argo CD's rule:
/// exactly `p, proj:PROJECT:ROLE, RESOURCE, ACTION, OBJECT, EFFECT` where the
/// resource is one of the project's own, and the object is `PROJECT/GLOB` or
/// `PROJECT/NAMESPACE/GLOB` with `GLOB` made of word characters, `-`, `.` and `*`
/// only. A `g` line, another subject, another project's object or a glob that
/// could reach further (`{`, `[`, `?`) is refused.
fn project_rule(project: &str, role: &str, line: &str) -> Result<Rule, String> {
    let subject = format!("proj:{project}:{role}");
    let form = format!(
        "a project role's policy must be one line \
         'p, {subject}, applications, ACTION, {project}/APP, allow|deny' naming subject {subject} \
         and objects {project}/..."
    );
    if line.contains(['\n', '\r']) {
        return Err(format!("{line:?}: {form}; it holds more than one line"));
    }
    // Argo CD splits on every comma: a quoted field is no way around the rules.
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let [p, sub, resource, action, object, effect] = fields[..] else {
        return Err(format!("{line:?}: {form}"));
    };
    if p != "p" {
        return Err(format!("{line:?}: {form}; {p:?} lines are not allowed"));
    }
    if sub != subject {
        return Err(format!("{line:?}: {form}; not subject {sub:?}"));
    }
    if !PROJECT_RESOURCES.contains(&resource) {
        return Err(format!(
            "{line:?}: {form}; resource must be one of {}, not {resource:?}",
            PROJECT_RESOURCES.join(", ")
        ));
    }
    if !(action == "*" || action.starts_with("action/") || ACTIONS.contains(&action)) {
        return Err(format!("{line:?}: unknown action {action:?}"));
    }
    let glob_part = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'*'))
    };
    let own = object
        .strip_prefix(project)
        .and_then(|rest| rest.strip_prefix('/'));
    let object_ok = own.is_some_and(|rest| {
        let parts: Vec<&str> = rest.split('/').collect();
        (1..=2).contains(&parts.len()) && parts.iter().all(|p| glob_part(p))
    });
    if !object_ok {
        return Err(format!(
            "{line:?}: {form}; object must be {project}/*, {project}/APP or \
             {project}/NAMESPACE/APP, not {object:?}"
        ));
    }
    let effect = match effect {
        "allow" => Effect::Allow,
        "deny" => Effect::Deny,
        other => {
            return Err(format!(
                "{line:?}: effect must be allow or deny, not {other:?}"
            ));
        }
    };
    Ok(Rule {
        subject,
        resource: resource.to_owned(),
        action: action.to_owned(),
        object: object.to_owned(),
        effect,
    })
}

/// A project role's group, as Argo CD takes it: a name, quoted if it holds a
/// comma, with no line breaks or other control characters.
fn project_group(group: &str) -> Result<String, String> {
    let trimmed = group.trim();
    let name = match trimmed
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        Some(inner) => inner,
        None if trimmed.contains(',') => {
            return Err(format!("group {group:?} holds a comma and must be quoted"));
        }
        None => trimmed,
    };
    if name.is_empty() {
        return Err(format!("group {group:?} is empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("group {group:?} holds control characters"));
    }
    Ok(name.to_owned())
}

/// Argo CD's glob match: `*` matches any run of characters, `/` included.
fn glob(pattern: &str, value: &str) -> bool {
    pattern == "*"
        || pattern == value
        || Glob::new(pattern).is_ok_and(|g| g.compile_matcher().is_match(value))
}

/// Splits one CSV line: comma-separated, fields trimmed, `"..."` may hold commas.
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field).trim().to_owned()),
            c => field.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed".to_owned());
    }
    fields.push(field.trim().to_owned());
    Ok(fields)
}
