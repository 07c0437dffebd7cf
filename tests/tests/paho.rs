//! End to end with Python paho-mqtt 2.x: each test starts its own broker and runs one
//! script of `tests/python/` against it, in MQTT 3.1.1 and 5.0 where the feature exists.
//!
//! The scripts print one JSON line per check (`{"check": NAME, "ok": BOOL, ...}`) and a
//! final `{"result": ...}`, and exit 0 only if every check passed. The tests here also
//! name the checks that must have run, so a script that silently skipped one fails.
//!
//! Run by `mote_tests::harness` (`harness = false`): without python3 and paho-mqtt 2.x
//! every test here is reported as ignored, with the reason, and under `CI=true` it fails.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mote_tests::harness::{Suite, PAHO};
use mote_tests::{python_script, run_script, Broker};

fn main() -> std::process::ExitCode {
    Suite::new()
        .tests(
            &[PAHO],
            mote_tests::tests![
                work_queue_competing_workers_and_redelivery_v311,
                work_queue_competing_workers_and_redelivery_v5,
                work_queue_unsubscribe_keeps_held_packet_ids_v5,
                pubsub_qos0_v311,
                pubsub_qos1_v311,
                pubsub_qos2_v311,
                pubsub_qos0_v5,
                pubsub_qos1_v5,
                pubsub_qos2_v5,
                pubsub_qos_downgraded_to_subscription,
                retained_set_replace_delete_v311,
                retained_set_replace_delete_v5,
                will_on_socket_close_without_disconnect_v311,
                will_on_socket_close_without_disconnect_v5,
                will_when_client_process_killed_v311,
                will_when_client_process_killed_v5,
                will_on_keepalive_timeout_v311,
                will_on_keepalive_timeout_v5,
                no_will_on_normal_disconnect_v311,
                no_will_on_normal_disconnect_v5,
                will_on_disconnect_reason_0x04_v5,
                will_delay_interval_v5,
                will_cancelled_by_reconnect_within_delay_v5,
                will_with_retain_is_kept_as_retained_v311,
                will_with_retain_is_kept_as_retained_v5,
                will_delay_capped_by_session_expiry_v5,
                persistent_session_gets_offline_qos1_qos2_v311,
                persistent_session_gets_offline_qos1_qos2_v5,
                unacked_qos1_resent_with_dup_on_resume_v311,
                unacked_qos1_resent_with_dup_on_resume_v5,
                pubrel_resent_on_resume_not_redelivered_v311,
                pubrel_resent_on_resume_not_redelivered_v5,
                v5_publish_properties_pass_through,
                v5_subscription_identifiers_on_overlapping_subscriptions,
                v5_no_local,
                v5_retain_as_published,
                v5_retain_handling,
                v5_message_expiry_offline_and_retained,
                shared_subscription_each_message_once_v311,
                shared_subscription_each_message_once_v5,
                shared_subscription_qos0_and_qos2,
                shared_subscription_unacked_qos1_goes_to_other_member_v311,
                shared_subscription_unacked_qos1_goes_to_other_member_v5,
                unsubscribe_v311,
                unsubscribe_v5,
                connack_v311,
                v5_connack_announces_default_limits,
                v5_connack_announces_configured_limits,
                v5_assigned_client_identifier_for_empty_id,
                v5_server_keep_alive_overrides_larger_client_value,
                v5_server_keep_alive_is_enforced_consistently,
                takeover_v311,
                takeover_v5_sends_disconnect_0x8e,
                takeover_of_clean_session_does_not_resume_it_v311,
                takeover_of_expiry_zero_session_does_not_resume_it_v5,
                v5_client_receive_maximum_respected,
                v5_client_maximum_packet_size_respected,
            ],
        )
        .run()
}

/// Runs `script` against `broker` with `args`, asserting it passed every check and ran
/// each of `checks`. Returns its stdout.
fn run_py(broker: &Broker, script: &str, args: &[&str], checks: &[&str]) -> String {
    let mut cmd = python_script(script);
    cmd.arg("--port")
        .arg(broker.port().to_string())
        .args(["--timeout", "16"])
        .args(args);
    run_script(
        &mut cmd,
        Duration::from_secs(19),
        &format!("{script} {args:?}"),
        checks,
        broker,
    )
}

/// Both protocol versions, as the scripts spell them.
const VERSIONS: [&str; 2] = ["311", "5"];

// ---------------------------------------------------------------- publish/subscribe

fn pubsub(version: &str, qos: &str, sub_qos: Option<&str>) {
    let broker = Broker::start();
    let mut args = vec!["--version", version, "--qos", qos];
    if let Some(s) = sub_qos {
        args.extend(["--sub-qos", s]);
    }
    let mut checks = vec![
        "suback",
        "payloads_in_order",
        "delivered_qos",
        "retain_flag",
        "topic",
    ];
    if qos != "0" {
        checks.push("publisher_flows_completed");
    }
    run_py(&broker, "pubsub.py", &args, &checks);
}

fn pubsub_qos0_v311() {
    pubsub("311", "0", None);
}

fn pubsub_qos1_v311() {
    pubsub("311", "1", None);
}

fn pubsub_qos2_v311() {
    pubsub("311", "2", None);
}

fn pubsub_qos0_v5() {
    pubsub("5", "0", None);
}

fn pubsub_qos1_v5() {
    pubsub("5", "1", None);
}

fn pubsub_qos2_v5() {
    pubsub("5", "2", None);
}

/// A QoS 2 publish to a QoS 1 subscription arrives at QoS 1 (and QoS 1 to QoS 0 at 0).
fn pubsub_qos_downgraded_to_subscription() {
    for v in VERSIONS {
        pubsub(v, "2", Some("1"));
        pubsub(v, "1", Some("0"));
    }
}

// ---------------------------------------------------------------- retained

fn retained(version: &str) {
    let broker = Broker::start();
    run_py(
        &broker,
        "retained.py",
        &["--version", version],
        &[
            "live_sub_gets_both",
            "live_sub_retain_flag_cleared",
            "new_sub_gets_latest_retained",
            "new_sub_retain_flag_set",
            "wildcard_sub_gets_retained",
            "delete_delivered_to_live_subscribers",
            "deleted_retained_not_sent",
            "plain_publish_keeps_retained",
        ],
    );
}

fn retained_set_replace_delete_v311() {
    retained("311");
}

fn retained_set_replace_delete_v5() {
    retained("5");
}

// ---------------------------------------------------------------- wills

fn will(version: &str, mode: &str, checks: &[&str]) {
    let broker = Broker::start();
    let mut all = checks.to_vec();
    let fires = !matches!(mode, "normal" | "delay-cancel");
    if fires {
        all.extend(["will_payloads", "will_qos", "will_retain"]);
        if version == "5" {
            all.extend(["will_content_type", "will_user_properties"]);
        }
    }
    run_py(
        &broker,
        "will.py",
        &["--version", version, "--mode", mode],
        &all,
    );
}

fn will_on_socket_close_without_disconnect_v311() {
    will("311", "abnormal", &["connack"]);
}

fn will_on_socket_close_without_disconnect_v5() {
    will("5", "abnormal", &["connack"]);
}

fn will_when_client_process_killed_v311() {
    will("311", "kill", &["child_ready"]);
}

fn will_when_client_process_killed_v5() {
    will("5", "kill", &["child_ready"]);
}

fn will_on_keepalive_timeout_v311() {
    will("311", "keepalive", &["will_after_keepalive_grace"]);
}

fn will_on_keepalive_timeout_v5() {
    will(
        "5",
        "keepalive",
        &["will_after_keepalive_grace", "keepalive_disconnect_reason"],
    );
}

fn no_will_on_normal_disconnect_v311() {
    will("311", "normal", &["no_will_after_normal_disconnect"]);
}

fn no_will_on_normal_disconnect_v5() {
    will("5", "normal", &["no_will_after_normal_disconnect"]);
}

fn will_on_disconnect_reason_0x04_v5() {
    will("5", "reason4", &["connack"]);
}

fn will_delay_interval_v5() {
    will("5", "delay", &["will_after_delay"]);
}

fn will_cancelled_by_reconnect_within_delay_v5() {
    will(
        "5",
        "delay-cancel",
        &[
            "reconnect_session_present",
            "no_will_after_reconnect_within_delay",
            "no_will_after_normal_disconnect",
        ],
    );
}

fn will_with_retain_is_kept_as_retained_v311() {
    will("311", "retained", &["will_kept_as_retained"]);
}

fn will_with_retain_is_kept_as_retained_v5() {
    will("5", "retained", &["will_kept_as_retained"]);
}

fn will_delay_capped_by_session_expiry_v5() {
    will("5", "delay-expiry", &["will_when_session_expires"]);
}

// ---------------------------------------------------------------- persistent sessions

fn session(version: &str) {
    let broker = Broker::start();
    run_py(
        &broker,
        "session.py",
        &["--version", version],
        &[
            "first_connack",
            "suback",
            "resume_connack",
            "queued_qos1_in_order",
            "queued_qos2_in_order",
            "nothing_else",
            "subscription_kept",
            "clean_connack",
            "clean_start_dropped_subscriptions",
        ],
    );
}

fn persistent_session_gets_offline_qos1_qos2_v311() {
    session("311");
}

fn persistent_session_gets_offline_qos1_qos2_v5() {
    session("5");
}

fn redeliver(version: &str, qos: &str) {
    let broker = Broker::start();
    let mut checks = vec![
        "first_delivery",
        "resume_connack",
        "redelivered_in_order_then_new",
        "dup_flags",
        "qos",
        "second_resume_connack",
        "nothing_resent_after_ack",
        "no_pubrel_resent_after_ack",
    ];
    checks.push(if qos == "1" {
        "same_packet_ids"
    } else {
        "pubrels_resent_first_in_order"
    });
    run_py(
        &broker,
        "redeliver.py",
        &["--version", version, "--qos", qos],
        &checks,
    );
}

fn unacked_qos1_resent_with_dup_on_resume_v311() {
    redeliver("311", "1");
}

fn unacked_qos1_resent_with_dup_on_resume_v5() {
    redeliver("5", "1");
}

fn pubrel_resent_on_resume_not_redelivered_v311() {
    redeliver("311", "2");
}

fn pubrel_resent_on_resume_not_redelivered_v5() {
    redeliver("5", "2");
}

// ---------------------------------------------------------------- v5 features

fn v5_publish_properties_pass_through() {
    let broker = Broker::start();
    let mut checks = Vec::new();
    let names: Vec<String> = ["0", "1", "2"]
        .iter()
        .flat_map(|q| {
            [
                "one_message",
                "user_properties_in_order",
                "content_type",
                "payload_format",
                "response_topic",
                "correlation_data",
                "expiry_forwarded",
                "response",
            ]
            .map(|c| format!("q{q}_{c}"))
        })
        .collect();
    checks.extend(names.iter().map(String::as_str));
    checks.extend([
        "bare_has_no_properties",
        "retained_user_properties",
        "retained_content_type",
        "retained_response_topic",
        "retained_correlation",
        "retained_payload_format",
    ]);
    run_py(&broker, "props.py", &[], &checks);
}

fn v5_subscription_identifiers_on_overlapping_subscriptions() {
    let broker = Broker::start();
    run_py(
        &broker,
        "subopts.py",
        &["--case", "subid"],
        &[
            "one_delivery_for_overlap",
            "highest_qos",
            "all_identifiers",
            "partial_overlap",
            "single_match",
            "identifier_replaced",
            "identifier_removed",
        ],
    );
}

fn v5_no_local() {
    let broker = Broker::start();
    run_py(
        &broker,
        "subopts.py",
        &["--case", "nolocal"],
        &["received", "overlap_without_nolocal_delivers"],
    );
}

fn v5_retain_as_published() {
    let broker = Broker::start();
    run_py(
        &broker,
        "subopts.py",
        &["--case", "rap"],
        &[
            "rap_keeps_flag",
            "no_rap_clears_flag",
            "on_subscribe_retain_set",
        ],
    );
}

fn v5_retain_handling() {
    let broker = Broker::start();
    run_py(
        &broker,
        "subopts.py",
        &["--case", "rh"],
        &[
            "rh0_new",
            "rh0_existing",
            "rh1_new",
            "rh1_existing",
            "rh2_new",
            "rh2_existing",
            "rh1_after_unsubscribe",
        ],
    );
}

fn v5_message_expiry_offline_and_retained() {
    let broker = Broker::start();
    run_py(
        &broker,
        "expiry.py",
        &[],
        &[
            "resume_connack",
            "only_unexpired_delivered",
            "remaining_interval_forwarded",
            "no_expiry_stays_none",
            "live_delivery",
            "live_interval",
            "expired_retained_not_sent",
            "retained_remaining_interval",
        ],
    );
}

// ---------------------------------------------------------------- shared subscriptions

fn shared(version: &str, qos: &str) {
    let broker = Broker::start();
    run_py(
        &broker,
        "shared.py",
        &["--version", version, "--qos", qos],
        &[
            "no_retained_for_shared",
            "retained_for_plain",
            "each_exactly_once",
            "disjoint",
            "both_members_used",
            "member_order_kept_a",
            "member_order_kept_b",
            "other_group_gets_all",
            "plain_gets_all",
            "sole_member_gets_all",
            "unsubscribed_member_gets_none",
        ],
    );
}

fn shared_subscription_each_message_once_v311() {
    shared("311", "1");
}

fn shared_subscription_each_message_once_v5() {
    shared("5", "1");
}

fn shared_subscription_qos0_and_qos2() {
    shared("311", "0");
    shared("5", "2");
}

fn work_queue(version: &str) {
    let broker = Broker::start();
    run_py(
        &broker,
        "queues.py",
        &["--version", version],
        &[
            "suback_w0",
            "suback_w3",
            "doomed_holds_at_most_prefetch",
            "every_job_done_by_a_live_worker",
            "no_job_done_twice",
            "held_jobs_came_back_flagged_dup",
            "fresh_jobs_not_flagged_dup",
            "v5_and_311_workers_both_worked",
            "at_most_prefetch_per_delivery_burst",
            "producer_acknowledged",
        ],
    );
}

fn work_queue_competing_workers_and_redelivery_v311() {
    work_queue("311");
}

fn work_queue_competing_workers_and_redelivery_v5() {
    work_queue("5");
}

fn work_queue_unsubscribe_keeps_held_packet_ids_v5() {
    let broker = Broker::start();
    run_py(
        &broker,
        "queues_unsubscribe.py",
        &[],
        &[
            "suback_worker",
            "worker_holds_ten_jobs",
            "unsuback",
            "suback_other",
            "jobs_went_to_the_other_worker",
            "flagged_dup",
            "news_within_receive_maximum",
            "no_held_packet_id_reused",
            "rest_after_the_acknowledgements",
            "no_job_done_again",
        ],
    );
}

fn shared_reroute(version: &str) {
    let broker = Broker::start();
    run_py(
        &broker,
        "shared.py",
        &["--version", version, "--case", "reroute"],
        &[
            "a_holds_some_unacked",
            "qos1_unacked_rerouted_to_other_member",
            "no_duplicates_at_b",
            "a2_holds_some",
            "begun_qos2_not_resent_elsewhere",
            "rest_of_qos2_at_b",
        ],
    );
}

fn shared_subscription_unacked_qos1_goes_to_other_member_v311() {
    shared_reroute("311");
}

fn shared_subscription_unacked_qos1_goes_to_other_member_v5() {
    shared_reroute("5");
}

// ---------------------------------------------------------------- unsubscribe

fn unsubscribe(version: &str) {
    let broker = Broker::start();
    let first = if version == "5" {
        "unsuback_codes"
    } else {
        "unsuback_received"
    };
    run_py(
        &broker,
        "unsubscribe.py",
        &["--version", version],
        &[
            "before",
            first,
            "after",
            "unsuback_nothing_subscribed",
            "all_gone",
            "still_connected",
        ],
    );
}

fn unsubscribe_v311() {
    unsubscribe("311");
}

fn unsubscribe_v5() {
    unsubscribe("5");
}

// ---------------------------------------------------------------- CONNACK

fn connack_v311() {
    let broker = Broker::start();
    run_py(
        &broker,
        "connack.py",
        &["--version", "311"],
        &["reason_code", "session_present", "usable"],
    );
}

fn v5_connack_announces_default_limits() {
    let broker = Broker::start();
    run_py(
        &broker,
        "connack.py",
        &[
            "--version",
            "5",
            "--expect",
            "ReceiveMaximum=1024",
            "--expect",
            "TopicAliasMaximum=64",
            "--expect",
            "MaximumPacketSize=1048576",
            "--expect",
            "RetainAvailable=1",
            "--expect",
            "WildcardSubscriptionAvailable=1",
            "--expect",
            "SubscriptionIdentifierAvailable=1",
            "--expect",
            "SharedSubscriptionAvailable=1",
            // Maximum QoS absent means 2; no Server Keep Alive for keep alive 60 < 3600;
            // no Assigned Client Identifier for a non-empty id.
            "--absent",
            "MaximumQoS",
            "--absent",
            "ServerKeepAlive",
            "--absent",
            "AssignedClientIdentifier",
        ],
        &[
            "reason_code",
            "session_present",
            "property_ReceiveMaximum",
            "property_TopicAliasMaximum",
            "property_MaximumPacketSize",
            "property_RetainAvailable",
            "property_WildcardSubscriptionAvailable",
            "property_SubscriptionIdentifierAvailable",
            "property_SharedSubscriptionAvailable",
            "absent_MaximumQoS",
            "absent_ServerKeepAlive",
            "absent_AssignedClientIdentifier",
            "usable",
        ],
    );
}

fn v5_connack_announces_configured_limits() {
    let config = "[mqtt]\nreceive_maximum = 20\nmax_packet_size = 4096\n\
                  topic_alias_maximum = 5\nmax_qos = 1\nretain_available = false\n\
                  wildcard_subscriptions = true\nshared_subscriptions = false\n\
                  subscription_identifiers = false\nmax_session_expiry = 100\n";
    let broker = Broker::start_with(&["--memory"], Some(config));
    run_py(
        &broker,
        "connack.py",
        &[
            "--version",
            "5",
            "--session-expiry",
            "3600",
            "--expect",
            "ReceiveMaximum=20",
            "--expect",
            "MaximumPacketSize=4096",
            "--expect",
            "TopicAliasMaximum=5",
            "--expect",
            "MaximumQoS=1",
            "--expect",
            "RetainAvailable=0",
            "--expect",
            "SharedSubscriptionAvailable=0",
            "--expect",
            "SubscriptionIdentifierAvailable=0",
            // The server grants less than asked: it must say so (MQTT-3.2.2-...).
            "--expect",
            "SessionExpiryInterval=100",
        ],
        &[
            "property_ReceiveMaximum",
            "property_MaximumPacketSize",
            "property_TopicAliasMaximum",
            "property_MaximumQoS",
            "property_RetainAvailable",
            "property_SharedSubscriptionAvailable",
            "property_SubscriptionIdentifierAvailable",
            "property_SessionExpiryInterval",
            "usable",
        ],
    );
}

fn v5_assigned_client_identifier_for_empty_id() {
    let broker = Broker::start();
    let out = run_py(
        &broker,
        "connack.py",
        &["--version", "5", "--client-id", ""],
        &["reason_code", "usable"],
    );
    let info = out.lines().next().unwrap_or_default();
    assert!(
        info.contains(r#""AssignedClientIdentifier": ""#)
            && !info.contains(r#""AssignedClientIdentifier": """#),
        "no non-empty Assigned Client Identifier in {info}"
    );
}

fn v5_server_keep_alive_overrides_larger_client_value() {
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nmax_keepalive = 60\n"));
    run_py(
        &broker,
        "connack.py",
        &[
            "--version",
            "5",
            "--keepalive",
            "120",
            "--check-keepalive",
            "--expect",
            "ServerKeepAlive=60",
        ],
        &[
            "property_ServerKeepAlive",
            "paho_uses_server_keepalive",
            "usable",
        ],
    );
    // A client value under the maximum is left alone: no Server Keep Alive.
    run_py(
        &broker,
        "connack.py",
        &[
            "--version",
            "5",
            "--keepalive",
            "30",
            "--check-keepalive",
            "--absent",
            "ServerKeepAlive",
        ],
        &["absent_ServerKeepAlive", "paho_uses_server_keepalive"],
    );
}

/// With a 2 s server keep alive, paho (told 2 s instead of its 120 s) pings in time and
/// the broker keeps the connection for 4 s: the override is consistent on both sides.
fn v5_server_keep_alive_is_enforced_consistently() {
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nmax_keepalive = 2\n"));
    run_py(
        &broker,
        "connack.py",
        &[
            "--version",
            "5",
            "--keepalive",
            "120",
            "--check-keepalive",
            "--expect",
            "ServerKeepAlive=2",
            "--stay",
            "4",
        ],
        &[
            "property_ServerKeepAlive",
            "paho_uses_server_keepalive",
            "still_connected_after_stay",
        ],
    );
}

// ---------------------------------------------------------------- takeover

fn takeover(version: &str, case: &str, checks: &[&str]) {
    let broker = Broker::start();
    run_py(
        &broker,
        "takeover.py",
        &["--version", version, "--case", case],
        checks,
    );
}

const TAKEOVER_RESUME: &[&str] = &[
    "first_connack",
    "second_connack",
    "first_closed",
    "will_of_first_published",
    "second_gets_session_messages",
    "first_gets_nothing",
    "second_still_connected",
    "clean_takeover_connack",
    "second_closed",
    "clean_takeover_no_subscriptions",
];

fn takeover_v311() {
    let mut checks = TAKEOVER_RESUME.to_vec();
    checks.push("first_disconnect_not_from_server");
    takeover("311", "resume", &checks);
}

fn takeover_v5_sends_disconnect_0x8e() {
    let mut checks = TAKEOVER_RESUME.to_vec();
    checks.push("first_disconnect_reason");
    takeover("5", "resume", &checks);
}

const TAKEOVER_EXPIRED: &[&str] = &[
    "takeover_connack_no_session",
    "first_closed",
    "old_subscriptions_gone",
];

fn takeover_of_clean_session_does_not_resume_it_v311() {
    takeover("311", "expired", TAKEOVER_EXPIRED);
}

fn takeover_of_expiry_zero_session_does_not_resume_it_v5() {
    takeover("5", "expired", TAKEOVER_EXPIRED);
}

// ---------------------------------------------------------------- limits the client sets

fn v5_client_receive_maximum_respected() {
    let broker = Broker::start();
    for qos in ["1", "2"] {
        run_py(
            &broker,
            "flow.py",
            &["--case", "receive-max", "--qos", qos],
            &[
                "window_of_two",
                "one_more_per_ack",
                "all_in_order_once",
                "no_dup_flags",
            ],
        );
    }
}

fn v5_client_maximum_packet_size_respected() {
    let broker = Broker::start();
    run_py(
        &broker,
        "flow.py",
        &["--case", "max-packet"],
        &[
            "limited_client_skips_large",
            "limited_client_still_connected",
            "other_client_gets_all",
            "large_retained_skipped",
        ],
    );
}
