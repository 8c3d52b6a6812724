use store::{
    AuditFilter, BindingKey, BindingRecord, BringUpRecord, DrainUpdate, MigrationState, NewAudit,
    PortalStatus, ProbedProfile, StoreError,
};

use crate::common::{Install, T0, TestDb};

crate::conformance!(
    bindings_are_replaced_as_a_whole,
    migrations_resume_and_apply_once,
    drain_keeps_its_process_id_until_cleared,
    parked_calls_keep_their_token_sealed,
    reinstall_repairs_residue_of_the_old_install,
    bring_up_record_is_written_whole_or_not_at_all,
    many_bindings_are_written_in_one_piece,
    version_census_and_drift_list,
);

fn rec(name: &str, handler: &str, state: &str) -> BindingRecord {
    BindingRecord {
        key: BindingKey {
            kind: "event".into(),
            name: name.into(),
            mode: "online".into(),
            handler: handler.into(),
            connector: String::new(),
        },
        auth_type: 0,
        owner: Some("deals".into()),
        options: serde_json::json!({}),
        expected: true,
        actual: state == "bound",
        state: state.into(),
        reason: None,
        last_result: Some("ok".into()),
    }
}

async fn bindings_are_replaced_as_a_whole(db: &TestDb) {
    let s = &db.store;
    let i = Install::new("acme");
    let m = i.member_id.as_str();
    s.record_verified_install(&i.verified(), T0).await.unwrap();
    s.replace_bindings(
        m,
        &[
            rec("ONCRMDEALADD", "https://g/b24/events", "bound"),
            rec("ONCRMDEALUPDATE", "https://g/b24/events", "missing"),
        ],
        T0,
    )
    .await
    .unwrap();
    let rows = s.binding_matrix(Some(m)).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].record.key.name, "ONCRMDEALADD");
    assert!(rows[0].record.actual);
    assert_eq!(rows[1].record.state, "missing");
    assert_eq!(rows[1].last_checked_at, Some(T0));
    s.replace_bindings(
        m,
        &[rec("ONCRMDEALUPDATE", "https://g/b24/events", "bound")],
        T0 + 1,
    )
    .await
    .unwrap();
    let rows = s.binding_matrix(None).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].record.state, "bound");
    assert_eq!(s.binding_counts().await.unwrap(), [("bound".to_owned(), 1)]);
}

/// A binding picture larger than one multi-row `INSERT` holds, with every
/// column varied per row, reads back row for row; a picture with a repeated
/// identity fails and leaves the previous picture as it was.
async fn many_bindings_are_written_in_one_piece(db: &TestDb) {
    let s = &db.store;
    let i = Install::new("acme");
    let m = i.member_id.as_str();
    s.record_verified_install(&i.verified(), T0).await.unwrap();
    let records: Vec<BindingRecord> = (0..450)
        .map(|n| BindingRecord {
            key: BindingKey {
                kind: if n % 3 == 0 { "placement" } else { "event" }.into(),
                name: format!("ONCRMITEM{n:03}"),
                mode: if n % 2 == 0 { "online" } else { "offline" }.into(),
                handler: if n % 2 == 0 {
                    format!("https://g/b24/events/{n}")
                } else {
                    String::new()
                },
                connector: if n % 5 == 0 {
                    format!("c{n}")
                } else {
                    String::new()
                },
            },
            auth_type: n as i64,
            owner: (n % 4 != 0).then(|| format!("owner{n}")),
            options: serde_json::json!({"n": n, "title": format!("t{n}")}),
            expected: n % 2 == 0,
            actual: n % 3 == 1,
            state: ["bound", "missing", "stale", "foreign"][n % 4].into(),
            reason: (n % 7 == 0).then(|| format!("reason {n}")),
            last_result: (n % 6 != 0).then(|| "ok".to_owned()),
        })
        .collect();
    s.record_bring_up(
        &BringUpRecord {
            member_id: m,
            profile: None,
            bindings: &records,
            version: Some(3),
            audit: Some(NewAudit {
                member_id: Some(m),
                actor: "engine",
                action: "reconcile.completed",
                outcome: "ok",
                detail: serde_json::json!({"bound": 450}),
            }),
        },
        T0 + 5,
    )
    .await
    .unwrap();
    let rows = s.binding_matrix(Some(m)).await.unwrap();
    let mut want = records.clone();
    want.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(rows.len(), want.len());
    for (row, rec) in rows.iter().zip(&want) {
        assert_eq!(row.member_id, m);
        assert_eq!(&row.record, rec);
        assert_eq!(row.last_checked_at, Some(T0 + 5));
    }
    assert_eq!(
        s.get_portal(m).await.unwrap().unwrap().installed_version,
        Some(3)
    );
    let audit = |s: &'static str| AuditFilter {
        member_id: Some(m),
        action_prefix: Some(s),
        ..AuditFilter::default()
    };
    assert_eq!(s.list_audit(&audit("reconcile.")).await.unwrap().len(), 1);

    // The same identity twice: nothing of this bring-up is written.
    let twice = [records[1].clone(), records[1].clone()];
    s.record_bring_up(
        &BringUpRecord {
            member_id: m,
            profile: None,
            bindings: &twice,
            version: Some(4),
            audit: Some(NewAudit {
                member_id: Some(m),
                actor: "engine",
                action: "reconcile.completed",
                outcome: "ok",
                detail: serde_json::json!({}),
            }),
        },
        T0 + 6,
    )
    .await
    .unwrap_err();
    assert_eq!(s.binding_matrix(Some(m)).await.unwrap().len(), 450);
    assert_eq!(
        s.get_portal(m).await.unwrap().unwrap().installed_version,
        Some(3)
    );
    assert_eq!(s.list_audit(&audit("reconcile.")).await.unwrap().len(), 1);

    // And an empty picture deletes every row.
    s.replace_bindings(m, &[], T0 + 7).await.unwrap();
    assert!(s.binding_matrix(Some(m)).await.unwrap().is_empty());
}

async fn migrations_resume_and_apply_once(db: &TestDb) {
    let s = &db.store;
    let i = Install::new("acme");
    let m = i.member_id.as_str();
    s.record_verified_install(&i.verified(), T0).await.unwrap();
    assert_eq!(
        s.migration_state(m, "m1").await.unwrap(),
        MigrationState::NotStarted
    );
    s.migration_progress(m, "m1", 2, 1, T0).await.unwrap();
    assert_eq!(
        s.migration_state(m, "m1").await.unwrap(),
        MigrationState::Running { step: 1 }
    );
    s.migration_progress(m, "m1", 2, 2, T0).await.unwrap();
    s.migration_applied(m, "m1", 2, T0).await.unwrap();
    assert_eq!(
        s.migration_state(m, "m1").await.unwrap(),
        MigrationState::Applied
    );
    // Progress after applied does not reopen it.
    s.migration_progress(m, "m1", 2, 0, T0).await.unwrap();
    assert_eq!(
        s.migration_state(m, "m1").await.unwrap(),
        MigrationState::Applied
    );
}

async fn drain_keeps_its_process_id_until_cleared(db: &TestDb) {
    let s = &db.store;
    let i = Install::new("acme");
    let m = i.member_id.as_str();
    s.record_verified_install(&i.verified(), T0).await.unwrap();
    assert!(s.drain_state(m, "").await.unwrap().is_none());
    s.set_drain_process(
        &DrainUpdate {
            member_id: m,
            connector: "",
            process_id: Some("p1"),
            ..Default::default()
        },
        T0,
    )
    .await
    .unwrap();
    let d = s.drain_state(m, "").await.unwrap().unwrap();
    assert_eq!(d.process_id.as_deref(), Some("p1"));
    assert!(!d.reserving);
    s.set_drain_process(
        &DrainUpdate {
            member_id: m,
            connector: "",
            process_id: Some("p1"),
            reserving: true,
            ..Default::default()
        },
        T0,
    )
    .await
    .unwrap();
    assert!(s.drain_state(m, "").await.unwrap().unwrap().reserving);
    assert_eq!(d.reserved_at, Some(T0));
    // Re-recording the same reservation keeps its start time.
    s.set_drain_process(
        &DrainUpdate {
            member_id: m,
            connector: "",
            process_id: Some("p1"),
            drained: 40,
            ..Default::default()
        },
        T0 + 5,
    )
    .await
    .unwrap();
    assert_eq!(
        s.drain_state(m, "").await.unwrap().unwrap().reserved_at,
        Some(T0)
    );
    s.set_drain_process(
        &DrainUpdate {
            member_id: m,
            connector: "",
            process_id: None,
            reserving: false,
            drained: 10,
            errors: 2,
            last_error: Some("undecodable row"),
        },
        T0 + 6,
    )
    .await
    .unwrap();
    let d = s.drain_state(m, "").await.unwrap().unwrap();
    assert_eq!(d.process_id, None);
    assert_eq!(d.reserved_at, None);
    assert_eq!((d.drained_total, d.error_total), (50, 2));
    assert_eq!(d.last_error.as_deref(), Some("undecodable row"));
    assert_eq!(d.last_drain_at, Some(T0 + 6));
    assert_eq!(s.drain_states().await.unwrap().len(), 1);
}

async fn parked_calls_keep_their_token_sealed(db: &TestDb) {
    let s = &db.store;
    let i = Install::new("acme");
    let m = i.member_id.as_str();
    s.record_verified_install(&i.verified(), T0).await.unwrap();
    let token = "parked-access-token-0123456789";
    let params = serde_json::json!({"USER_ID": 1});
    let id = s
        .park_call(m, "voximplant.user.get", &params, token, T0 + 3_600_000, T0)
        .await
        .unwrap();
    let fp = db.keys.fingerprint(token);
    let waiting = s
        .waiting_calls(m, "VOXIMPLANT.USER.GET", &fp)
        .await
        .unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].id, id);
    assert_eq!(waiting[0].state, "waiting");
    assert!(!waiting[0].params.contains(token));
    assert_eq!(s.pending_call_token(&waiting[0]).await.unwrap(), token);
    assert!(
        s.waiting_calls(m, "voximplant.user.get", "otherfingerprint")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.settle_call(id, "waiting", "confirmed", None, T0 + 1)
            .await
            .unwrap()
    );
    assert!(
        !s.settle_call(id, "waiting", "denied", None, T0 + 2)
            .await
            .unwrap(),
        "settled once"
    );
    assert!(
        s.settle_call(id, "confirmed", "done", Some(r#"{"result":[]}"#), T0 + 3)
            .await
            .unwrap()
    );
    let c = s.get_pending_call(id).await.unwrap().unwrap();
    assert_eq!(c.state, "done");
    assert_eq!(c.result.as_deref(), Some(r#"{"result":[]}"#));
}

async fn reinstall_repairs_residue_of_the_old_install(db: &TestDb) {
    let s = &db.store;
    let i = Install::new("acme");
    let m = i.member_id.as_str();
    s.record_verified_install(&i.verified(), T0).await.unwrap();
    s.set_status(m, store::PortalStatus::Installed, None, "engine", T0)
        .await
        .unwrap();
    let id = s
        .park_call(
            m,
            "voximplant.user.get",
            &serde_json::json!({}),
            "old-token-000000",
            T0 + 10,
            T0,
        )
        .await
        .unwrap();
    s.set_drain_process(
        &DrainUpdate {
            member_id: m,
            connector: "",
            process_id: Some("old"),
            ..Default::default()
        },
        T0,
    )
    .await
    .unwrap();
    // A repeat install while installed keeps them (an update, not a new life).
    s.record_verified_install(&i.verified(), T0 + 1)
        .await
        .unwrap();
    assert_eq!(
        s.get_pending_call(id).await.unwrap().unwrap().state,
        "waiting"
    );
    assert!(s.drain_state(m, "").await.unwrap().is_some());
    s.set_status(m, store::PortalStatus::Installed, None, "engine", T0 + 2)
        .await
        .unwrap();
    s.mark_uninstalled(m, false, None, T0 + 3).await.unwrap();
    s.record_verified_install(&i.verified(), T0 + 4)
        .await
        .unwrap();
    assert_eq!(
        s.get_pending_call(id).await.unwrap().unwrap().state,
        "expired"
    );
    assert!(s.drain_state(m, "").await.unwrap().is_none());
}

async fn bring_up_record_is_written_whole_or_not_at_all(db: &TestDb) {
    let s = &db.store;
    let i = Install::new("acme");
    let m = i.member_id.as_str();
    s.record_verified_install(&i.verified(), T0).await.unwrap();
    s.replace_bindings(
        m,
        &[rec("ONCRMDEALADD", "https://g/b24/events", "bound")],
        T0,
    )
    .await
    .unwrap();
    let scopes = [wire::Scope::parse("crm").unwrap()];
    let profile = serde_json::json!({"features": {"rest_offline_extended": true}});
    let records = [
        rec("ONCRMDEALADD", "https://g/b24/events", "bound"),
        rec("ONCRMDEALUPDATE", "https://g/b24/events", "bound"),
    ];
    s.record_bring_up(
        &BringUpRecord {
            member_id: m,
            profile: Some(ProbedProfile {
                scopes: &scopes,
                profile: &profile,
                plan: "enterprise",
                license: Some("ent250"),
            }),
            bindings: &records,
            version: Some(2),
            audit: Some(NewAudit {
                member_id: Some(m),
                actor: "engine",
                action: "reconcile.completed",
                outcome: "ok",
                detail: serde_json::json!({"bound": 1}),
            }),
        },
        T0 + 1,
    )
    .await
    .unwrap();
    let p = s.get_portal(m).await.unwrap().unwrap();
    assert_eq!(p.installed_version, Some(2));
    assert_eq!(p.profile, profile);
    assert_eq!(p.plan, "enterprise");
    assert_eq!(p.license.as_deref(), Some("ent250"));
    assert_eq!(p.scopes, scopes);
    let rows = s.binding_matrix(Some(m)).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.last_checked_at == Some(T0 + 1)));
    let audit = s
        .list_audit(&AuditFilter {
            member_id: Some(m),
            action_prefix: Some("reconcile."),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].at, T0 + 1);
    assert_eq!(audit[0].detail_json()["bound"], 1);

    // Without a probe or a version, those stay as they were.
    s.record_bring_up(
        &BringUpRecord {
            member_id: m,
            profile: None,
            bindings: &records[..1],
            version: None,
            audit: None,
        },
        T0 + 2,
    )
    .await
    .unwrap();
    let p = s.get_portal(m).await.unwrap().unwrap();
    assert_eq!((p.installed_version, p.profile), (Some(2), profile.clone()));
    assert_eq!(p.plan, "enterprise");
    assert_eq!(s.binding_matrix(Some(m)).await.unwrap().len(), 1);

    // An unknown portal: an error, and nothing of it is written.
    let ghost = Install::new("ghost");
    let g = ghost.member_id.as_str();
    let err = s
        .record_bring_up(
            &BringUpRecord {
                member_id: g,
                profile: None,
                bindings: &records,
                version: Some(2),
                audit: Some(NewAudit {
                    member_id: Some(g),
                    actor: "engine",
                    action: "reconcile.completed",
                    outcome: "ok",
                    detail: serde_json::json!({}),
                }),
            },
            T0 + 3,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PortalNotFound(_)), "{err}");
    assert!(s.binding_matrix(Some(g)).await.unwrap().is_empty());
    let none = s
        .list_audit(&AuditFilter {
            member_id: Some(g),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
}

async fn version_census_and_drift_list(db: &TestDb) {
    let s = &db.store;
    let mut members = Vec::new();
    for (tag, version) in [("a", Some(1)), ("b", Some(2)), ("c", None), ("d", Some(3))] {
        let i = Install::new(tag);
        let m = i.member_id.as_str().to_owned();
        s.record_verified_install(&i.verified(), T0).await.unwrap();
        s.set_status(&m, PortalStatus::Installed, None, "engine", T0)
            .await
            .unwrap();
        if let Some(v) = version {
            s.set_installed_version(&m, v, T0).await.unwrap();
        }
        members.push(m);
    }
    // Installing (not yet installed) portals are neither counted nor listed.
    let pending = Install::new("e");
    s.record_verified_install(&pending.verified(), T0)
        .await
        .unwrap();
    assert_eq!(s.version_census(2).await.unwrap(), (4, 2));
    assert_eq!(s.version_census(4).await.unwrap(), (4, 0));
    let mut want = vec![members[0].clone(), members[2].clone()];
    want.sort();
    assert_eq!(s.portals_below_version(2).await.unwrap(), want);
    assert_eq!(
        s.portals_below_version(1).await.unwrap(),
        vec![members[2].clone()]
    );
}
