//! `tokend events` (the event feed, listed or followed) and `tokend webhooks
//! status`, built on `tokend-client`. Metadata only: events carry no secret.

use clap::{Args, Subcommand};
use futures::StreamExt as _;
use serde_json::json;
use tokend_client::{EventFilter, EventType};
use tokend_proto::v1 as pb;

use crate::cli::{ClientArgs, client, print};

/// `tokend events`.
#[derive(Args, Clone)]
pub struct EventsArgs {
    /// Keep streaming new events after the retained ones.
    #[arg(long)]
    pub follow: bool,
    /// Start after this cursor (`oldest`: with the oldest retained event).
    /// Default: the oldest retained event, or, with --follow, new events only.
    #[arg(long, value_name = "CURSOR")]
    pub since: Option<String>,
    /// Only this provider's connections (repeatable).
    #[arg(long = "provider", value_name = "P")]
    pub providers: Vec<String>,
    /// Only connection ids with this prefix (repeatable).
    #[arg(long = "prefix", value_name = "PREFIX")]
    pub prefixes: Vec<String>,
    /// Only this event type (repeatable): installed, token_rotated,
    /// refresh_failed, reconnect_required, recovered, deleted.
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_type)]
    pub types: Vec<EventType>,
}

fn parse_type(s: &str) -> Result<EventType, String> {
    let upper = format!(
        "EVENT_TYPE_{}",
        s.trim_start_matches("EVENT_TYPE_").to_ascii_uppercase()
    );
    match EventType::from_str_name(&upper) {
        Some(t) if !matches!(t, EventType::Unspecified | EventType::Checkpoint) => Ok(t),
        _ => Err(format!(
            "unknown event type {s:?}; known: installed, token_rotated, refresh_failed, reconnect_required, recovered, deleted"
        )),
    }
}

#[derive(Subcommand)]
pub enum WebhooksCommand {
    /// Each endpoint's delivery state: healthy, retrying or failing, how far
    /// behind, and the last error.
    Status,
}

fn type_name(t: i32) -> String {
    pb::EventType::try_from(t)
        .map(|t| {
            t.as_str_name()
                .trim_start_matches("EVENT_TYPE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| t.to_string())
}

fn time(t: &Option<tokend_proto::pbjson_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// One event as a line of text.
fn event_line(e: &pb::ConnectionEvent) -> String {
    let mut line = format!(
        "{} {} {} {}",
        e.sequence,
        time(&e.event_time),
        type_name(e.event_type),
        e.connection_id
    );
    if let Some(c) = &e.connection {
        line.push_str(&format!(" provider={} version={}", c.provider, c.version));
        if let Some(err) = &c.last_error
            && e.event_type != pb::EventType::Installed as i32
        {
            line.push_str(&format!(" error={}", err.code));
        }
    }
    if let Some(cause) = crate::render::cause_name(e.cause) {
        line.push_str(&format!(" cause={cause}"));
    }
    line.push('\n');
    line
}

pub async fn events(args: &ClientArgs, events: EventsArgs) -> anyhow::Result<()> {
    let tokend = client(args).await?;
    let filter = EventFilter {
        providers: events.providers,
        connection_id_prefixes: events.prefixes,
        event_types: events.types,
        statuses: Vec::new(),
    };
    let mut stream = tokend.watch_all(filter);
    stream = match events.since.as_deref() {
        Some("oldest") => stream.from_oldest(),
        Some(cursor) => stream.resume_after(cursor),
        None if events.follow => stream,
        None => stream.from_oldest(),
    };
    if !events.follow {
        stream = stream.until_caught_up();
    }
    while let Some(event) = stream.next().await {
        let event = event?;
        print(args, serde_json::to_value(&event)?, event_line(&event));
    }
    // Where to continue from next time.
    if let Some(cursor) = stream.cursor() {
        if args.json {
            println!("{}", json!({ "cursor": cursor }));
        } else {
            eprintln!("cursor {cursor}");
        }
    }
    Ok(())
}

pub async fn webhooks(args: &ClientArgs, command: WebhooksCommand) -> anyhow::Result<()> {
    let tokend = client(args).await?;
    match command {
        WebhooksCommand::Status => {
            let hooks = tokend.list_webhooks().await?;
            if args.json {
                println!("{}", serde_json::to_value(&hooks)?);
                return Ok(());
            }
            if hooks.is_empty() {
                println!("no webhooks configured");
            }
            for h in hooks {
                let state = pb::WebhookState::try_from(h.state)
                    .map(|s| {
                        s.as_str_name()
                            .trim_start_matches("WEBHOOK_STATE_")
                            .to_ascii_lowercase()
                    })
                    .unwrap_or_default();
                let mut line = format!(
                    "{} {} {} delivered_through={} behind={}",
                    h.name, state, h.url, h.delivered_sequence, h.behind
                );
                if h.failing_since.is_some() {
                    line.push_str(&format!(" failing_since={}", time(&h.failing_since)));
                }
                if !h.last_error.is_empty() {
                    line.push_str(&format!(" last_error={:?}", h.last_error));
                }
                if h.next_attempt_at.is_some() {
                    line.push_str(&format!(" next_attempt={}", time(&h.next_attempt_at)));
                }
                println!("{line}");
            }
        }
    }
    Ok(())
}
