//! Events: the catalogue and firing (online jobs, the offline queue, ONOFFLINEEVENT),
//! with the hit's de-duplication and the event-session loop protection (§2.6). The
//! jobs are sent by the worker in [`crate::delivery`].

use std::sync::Arc;

use md5::{Digest, Md5};
use serde_json::{Value, json};

use crate::delivery::{AppContext, Job, Payload, UserAuth};
use crate::state::{Farm, OfflineRow};

/// What the portal knows about one event code.
#[derive(Debug, Clone, Copy)]
pub struct EventDef {
    pub name: &'static str,
    /// Scope that must be granted to bind it; `None` = global (§5.4).
    pub scope: Option<&'static str>,
    /// Tokens are added when a user context exists (`sendAuth`, §2.3).
    pub send_auth: bool,
    /// `auth[refresh_token]` is added (`sendRefreshToken`, §2.3).
    pub send_refresh: bool,
    /// Can be bound with `event_type=offline` (ONOFFLINEEVENT cannot, §4.6).
    pub offline_allowed: bool,
}

const fn ev(
    name: &'static str,
    scope: Option<&'static str>,
    auth: bool,
    refresh: bool,
) -> EventDef {
    EventDef {
        name,
        scope,
        send_auth: auth,
        send_refresh: refresh,
        offline_allowed: true,
    }
}

/// The event catalogue of every emulated portal.
pub const EVENTS: &[EventDef] = &[
    ev("ONAPPUNINSTALL", None, false, false),
    ev("ONAPPINSTALL", None, true, true),
    ev("ONAPPUPDATE", None, true, true),
    ev("ONAPPPAYMENT", None, false, false),
    ev("ONAPPTEST", None, true, true),
    ev("ONAPPMETHODCONFIRM", None, false, false),
    EventDef {
        name: "ONOFFLINEEVENT",
        scope: None,
        send_auth: true,
        send_refresh: true,
        offline_allowed: false,
    },
    ev("ONCRMDEALADD", Some("crm"), true, false),
    ev("ONCRMDEALUPDATE", Some("crm"), true, false),
    ev("ONCRMDEALDELETE", Some("crm"), true, false),
    ev("ONCRMLEADADD", Some("crm"), true, false),
    ev("ONCRMLEADUPDATE", Some("crm"), true, false),
    ev("ONCRMLEADDELETE", Some("crm"), true, false),
    ev("ONCRMCONTACTADD", Some("crm"), true, false),
    ev("ONCRMCONTACTUPDATE", Some("crm"), true, false),
    ev("ONCRMCONTACTDELETE", Some("crm"), true, false),
    ev("ONCRMCOMPANYADD", Some("crm"), true, false),
    ev("ONCRMCOMPANYUPDATE", Some("crm"), true, false),
    ev("ONCRMCOMPANYDELETE", Some("crm"), true, false),
    ev("ONTASKADD", Some("task"), true, false),
    ev("ONTASKUPDATE", Some("task"), true, false),
    ev("ONTASKDELETE", Some("task"), true, false),
    ev("ONUSERADD", Some("user"), true, false),
];

/// Looks an event up by name, any case.
pub fn event_def(name: &str) -> Option<&'static EventDef> {
    EVENTS.iter().find(|e| e.name.eq_ignore_ascii_case(name))
}

/// `MESSAGE_ID = md5(EVENT_NAME + "|" + json(EVENT_DATA))`, §5.5.
pub fn message_id(event: &str, data: &Value) -> String {
    let mut h = Md5::new();
    h.update(event.as_bytes());
    h.update(b"|");
    h.update(serde_json::to_string(data).unwrap_or_default().as_bytes());
    hex::encode(h.finalize())
}

/// Who caused a change: used for offline self-suppression (§5.5).
#[derive(Debug, Clone, Default)]
pub struct Initiator {
    pub client_id: Option<String>,
    pub connector: String,
}

impl Farm {
    /// What every delivery to (portal, app) shares, cached on the install and rebuilt
    /// when the portal's name or domain or the app's token or status changed since.
    pub(crate) fn app_context(&mut self, member_id: &str, client_id: &str) -> Arc<AppContext> {
        let Some(p) = self.portals.get(member_id) else {
            return Arc::new(AppContext {
                member_id: member_id.to_string(),
                client_id: client_id.to_string(),
                portal_name: String::new(),
                domain: String::new(),
                client_endpoint: String::new(),
                server_endpoint: self.server_endpoint(),
                application_token: String::new(),
                status: String::new(),
                scope: String::new(),
            });
        };
        let i = p.installs.get(client_id);
        if let Some(i) = i
            && let Some(c) = &i.context
            && c.portal_name == p.name
            && c.domain == p.domain
            && c.application_token == i.application_token
            && c.status == i.status
        {
            return c.clone();
        }
        let ctx = Arc::new(AppContext {
            member_id: member_id.to_string(),
            client_id: client_id.to_string(),
            portal_name: p.name.clone(),
            domain: p.domain.clone(),
            client_endpoint: self.client_endpoint(p),
            server_endpoint: self.server_endpoint(),
            application_token: i.map(|i| i.application_token.clone()).unwrap_or_default(),
            status: i.map(|i| i.status.clone()).unwrap_or_default(),
            scope: self
                .apps
                .get(client_id)
                .map(|a| a.scopes.join(","))
                .unwrap_or_default(),
        });
        if let Some(i) = self
            .portals
            .get_mut(member_id)
            .and_then(|p| p.installs.get_mut(client_id))
        {
            i.context = Some(ctx.clone());
        }
        ctx
    }

    /// The token part of a delivery's `auth` (§2.3): only when the event sends auth
    /// and a user context exists. `session` is the event session the token carries.
    fn user_auth(
        &mut self,
        member_id: &str,
        client_id: &str,
        user_id: u64,
        def: &EventDef,
        session: Option<u32>,
    ) -> Option<UserAuth> {
        if !def.send_auth || user_id == 0 {
            return None;
        }
        let now = self.now();
        let (access_token, refresh_token, expires) = if def.send_refresh {
            let (a, r, e) = self.issue_pair(member_id, client_id, user_id);
            if let Some(t) = self.tokens.get_mut(&a) {
                t.session = session;
            }
            (a, Some(r), e)
        } else {
            let (a, e) = self.event_token(member_id, client_id, user_id, session);
            (a, None, e)
        };
        Some(UserAuth {
            access_token,
            expires,
            expires_in: (expires - now).max(0),
            user_id,
            refresh_token,
        })
    }

    /// A still-valid access token for deliveries to (app, user) in an event session,
    /// reused across events.
    fn event_token(
        &mut self,
        member_id: &str,
        client_id: &str,
        user_id: u64,
        session: Option<u32>,
    ) -> (String, i64) {
        let now = self.now();
        let cached = self
            .portals
            .get(member_id)
            .and_then(|p| p.installs.get(client_id))
            .and_then(|i| i.event_tokens.get(&(user_id, session)));
        if let Some(t) = cached
            && let Some(at) = self.tokens.get(t)
            && at.expires > now + 60
        {
            return (t.clone(), at.expires);
        }
        let t = self.issue_access(member_id, client_id, user_id);
        let mut expires = now;
        if let Some(at) = self.tokens.get_mut(&t) {
            at.session = session;
            expires = at.expires;
        }
        if let Some(i) = self
            .portals
            .get_mut(member_id)
            .and_then(|p| p.installs.get_mut(client_id))
        {
            i.event_tokens.insert((user_id, session), t.clone());
        }
        (t, expires)
    }

    /// The event session of events fired in this hit (§2.6 loop protection, the
    /// module's `Event\Session`): a hit made with an event's token fires events one
    /// TTL lower; any other hit starts at `event_session_ttl`. `None` when the TTL ran
    /// out: the hit fires nothing. `Some(None)` when loop protection is off.
    fn event_session(&mut self) -> Option<Option<u32>> {
        let ttl = self.cfg.event_session_ttl;
        if ttl == 0 {
            return Some(None);
        }
        match self.hit.session {
            None => Some(Some(ttl)),
            Some(t) if t > 1 => Some(Some(t - 1)),
            Some(_) => {
                self.stats.events_ttl_exceeded += 1;
                None
            }
        }
    }

    fn push_job(
        &mut self,
        app: Arc<AppContext>,
        event: &'static str,
        binding_id: u64,
        url: String,
        data: Value,
        user: Option<UserAuth>,
    ) {
        self.stats.deliveries_queued += 1;
        self.pending.push(Job {
            app,
            event,
            binding_id: Some(binding_id),
            url,
            ts: self.now(),
            payload: Payload::Event { data, user },
        });
    }

    fn app_receives_events(&self, member_id: &str, client_id: &str) -> bool {
        self.portals
            .get(member_id)
            .and_then(|p| p.installs.get(client_id))
            .is_some_and(|i| i.active && i.installed && !i.payment_expired)
    }

    /// Fires an entity event (ONCRMDEALADD, …) on a portal: online jobs for bound
    /// handlers, rows in the offline queue, then ONOFFLINEEVENT notifications.
    /// `user_id` 0 = system change (no tokens, §2.3).
    pub fn fire_entity(
        &mut self,
        member_id: &str,
        event: &str,
        data: Value,
        user_id: u64,
        initiator: &Initiator,
    ) {
        let Some(def) = event_def(event) else { return };
        let Some(p) = self.portals.get(member_id) else {
            return;
        };
        let targets: Vec<(u64, String, String, u64, bool, String)> = p
            .bindings
            .iter()
            .filter(|b| b.event == def.name)
            .map(|b| {
                (
                    b.id,
                    b.client_id.clone(),
                    b.handler.clone(),
                    b.auth_type,
                    b.offline,
                    b.connector.clone(),
                )
            })
            .collect();
        if targets.is_empty() {
            return;
        }
        let Some(session) = self.event_session() else {
            return;
        };
        let mut notify: Vec<String> = Vec::new();
        let data_json = if self.cfg.dedup_within_hit {
            serde_json::to_string(&data).unwrap_or_default()
        } else {
            String::new()
        };
        for (id, client, handler, auth_type, offline, connector) in targets {
            if !self.app_receives_events(member_id, &client) {
                continue;
            }
            if offline {
                // Self-suppression (§5.5): the app's own change on the same connector
                // is not queued for it.
                if initiator.client_id.as_deref() == Some(client.as_str())
                    && initiator.connector == connector
                {
                    continue;
                }
                self.offline_upsert(member_id, &client, &connector, def.name, &data, user_id);
                if !notify.contains(&client) {
                    notify.push(client);
                }
            } else {
                let uid = if auth_type > 0 { auth_type } else { user_id };
                // Identical (handler, event, user, data) items within one hit are sent
                // once (§2.6, `Buffer` in the module source).
                if self.cfg.dedup_within_hit && !self.hit.seen.insert((id, uid, data_json.clone()))
                {
                    continue;
                }
                let app = self.app_context(member_id, &client);
                let user = self.user_auth(member_id, &client, uid, def, session);
                self.push_job(app, def.name, id, handler, data.clone(), user);
            }
        }
        for client in notify {
            self.notify_offline(member_id, &client, user_id, session);
        }
    }

    fn offline_upsert(
        &mut self,
        member_id: &str,
        client: &str,
        connector: &str,
        event: &str,
        data: &Value,
        user_id: u64,
    ) {
        let mid = message_id(event, data);
        let now = self.now_us;
        let Some(p) = self.portals.get_mut(member_id) else {
            return;
        };
        let q = &mut p.offline;
        let key = (client.to_string(), connector.to_string(), mid);
        if let Some(id) = q.unreserved.get(&key)
            && let Some(row) = q.rows.get_mut(id)
        {
            row.timestamp_us = now;
            row.event_data = data.clone();
            row.user_id = user_id;
            return;
        }
        q.next_id += 1;
        let id = q.next_id;
        q.rows.insert(
            id,
            OfflineRow {
                id,
                timestamp_us: now,
                event_name: event.to_string(),
                event_data: data.clone(),
                user_id,
                message_id: key.2.clone(),
                client_id: key.0.clone(),
                connector: key.1.clone(),
                process_id: None,
                error: false,
            },
        );
        q.unreserved.insert(key, id);
    }

    /// ONOFFLINEEVENT to the app's online handlers, honouring `minTimeout` (§4.6).
    fn notify_offline(
        &mut self,
        member_id: &str,
        client: &str,
        user_id: u64,
        session: Option<u32>,
    ) {
        let now = self.now_f();
        let mut send = Vec::new();
        let Some(p) = self.portals.get_mut(member_id) else {
            return;
        };
        for b in p.bindings.iter_mut() {
            if b.client_id != client || b.event != "ONOFFLINEEVENT" || b.offline {
                continue;
            }
            let min = b.min_timeout.unwrap_or(1.0);
            if min <= 0.0 {
                if !self.hit.notified.insert(b.id) {
                    continue;
                }
            } else if b.last_notified.is_some_and(|t| now - t < min) {
                continue;
            }
            b.last_notified = Some(now);
            send.push((b.id, b.handler.clone(), b.auth_type));
        }
        let def = event_def("ONOFFLINEEVENT").expect("in the catalogue");
        for (id, handler, auth_type) in send {
            let uid = if auth_type > 0 { auth_type } else { user_id };
            let app = self.app_context(member_id, client);
            let user = self.user_auth(member_id, client, uid, def, session);
            self.push_job(app, def.name, id, handler, json!([]), user);
        }
    }

    /// Fires a lifecycle event (ONAPP*) to the handlers of one app only (§4).
    /// `gated` = subject to ACTIVE/INSTALLED/payment gating.
    pub fn fire_app(
        &mut self,
        member_id: &str,
        client: &str,
        event: &str,
        data: Value,
        user_id: u64,
        gated: bool,
    ) {
        let Some(def) = event_def(event) else { return };
        if gated && !self.app_receives_events(member_id, client) {
            return;
        }
        let Some(p) = self.portals.get(member_id) else {
            return;
        };
        let targets: Vec<(u64, String, u64)> = p
            .bindings
            .iter()
            .filter(|b| b.client_id == client && b.event == def.name && !b.offline)
            .map(|b| (b.id, b.handler.clone(), b.auth_type))
            .collect();
        if targets.is_empty() {
            return;
        }
        let Some(session) = self.event_session() else {
            return;
        };
        for (id, handler, auth_type) in targets {
            let uid = if auth_type > 0 { auth_type } else { user_id };
            let app = self.app_context(member_id, client);
            let user = self.user_auth(member_id, client, uid, def, session);
            self.push_job(app, def.name, id, handler, data.clone(), user);
        }
    }
}
