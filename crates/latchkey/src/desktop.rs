//! Desktop notifications (the freedesktop.org Desktop Notifications Specification,
//! `org.freedesktop.Notifications` on the session D-Bus): a login that needs the
//! person says so where they look, with an action that opens latchkey's sign-in
//! start page. The daemon runs in the background, so a browser window it opens
//! can go unseen, or not open at all.
//!
//! Through `zbus`, which the keyring already brings (its default executor, as the
//! keyring uses it). Without a session bus or a notification service, nothing is
//! shown and the caller says so in its log.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt as _;
use zbus::zvariant::Value;

const SERVICE: &str = "org.freedesktop.Notifications";
const PATH: &str = "/org/freedesktop/Notifications";
/// How long the action stays usable: as long as a browser login may take.
const ACTION_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Shows "NAME needs you to sign in"; `on_action` runs if the person clicks it
/// (the caller opens the start page). Whether a notification service took it.
pub async fn notify_sign_in(
    server: &str,
    command: &str,
    on_action: impl FnOnce() + Send + 'static,
) -> bool {
    let Ok(Ok(bus)) =
        tokio::time::timeout(Duration::from_secs(2), zbus::Connection::session()).await
    else {
        return false;
    };
    let hints: HashMap<&str, Value<'_>> = HashMap::from([("urgency", Value::U8(1))]);
    let sent = bus
        .call_method(
            Some(SERVICE),
            PATH,
            Some(SERVICE),
            "Notify",
            &(
                "latchkey",
                0u32,
                "dialog-password",
                format!("{server} needs you to sign in"),
                format!("Sign in to continue, or run {command} in a terminal."),
                vec!["default", "Sign in"],
                hints,
                -1i32,
            ),
        )
        .await;
    let Some(id) = sent
        .ok()
        .and_then(|reply| reply.body().deserialize::<u32>().ok())
    else {
        return false;
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(ACTION_LIFETIME, follow(bus, id, on_action)).await;
    });
    true
}

/// Runs `on_action` when the notification's action is invoked; ends when it closes.
async fn follow(bus: zbus::Connection, id: u32, on_action: impl FnOnce()) -> zbus::Result<()> {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(SERVICE)?
        .path(PATH)?
        .build();
    let mut signals = zbus::MessageStream::for_match_rule(rule, &bus, None).await?;
    while let Some(Ok(message)) = signals.next().await {
        let header = message.header();
        let ours = |n: u32| n == id;
        match header.member().map(|m| m.as_str()) {
            Some("ActionInvoked")
                if message
                    .body()
                    .deserialize::<(u32, String)>()
                    .is_ok_and(|(n, _)| ours(n)) =>
            {
                on_action();
                return Ok(());
            }
            Some("NotificationClosed")
                if message
                    .body()
                    .deserialize::<(u32, u32)>()
                    .is_ok_and(|(n, _)| ours(n)) =>
            {
                return Ok(());
            }
            _ => {}
        }
    }
    Ok(())
}
