//! Cold channels around a load run (docs/SCALING.md, "many followed channels"): subscribers
//! on the subscribers' hub follow `count` channels `cold:0…` besides the bench channel (100
//! per connection, the hub's default `WS_MAX_SUBSCRIPTIONS`), and one publisher on the
//! publishers' hub publishes on them round robin at a steady rate; so the hub follows that
//! many channels, each moving now and then, while the bench channel is measured. Without
//! the subscribers (`--cold-unfollowed`) the same publications run through Redis but no hub
//! follows them: what they cost apart from following.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Channels one cold subscriber follows (the hub's default `WS_MAX_SUBSCRIPTIONS`).
const PER_CONNECTION: usize = 100;
/// How often the cold publisher sends the publications due.
const TICK: Duration = Duration::from_millis(10);

/// See the module documentation.
pub(crate) struct ColdChannels {
    tasks: JoinSet<Result<()>>,
    stop: CancellationToken,
}

impl ColdChannels {
    /// Subscribes `count` cold channels on `subscribe_at` (returns once every subscription
    /// is confirmed; unless not `followed`) and starts publishing on them at `rate` per
    /// second on `publish_at`.
    pub(crate) async fn start(
        subscribe_at: SocketAddr,
        publish_at: SocketAddr,
        count: usize,
        rate: f64,
        followed: bool,
    ) -> Result<Self> {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let names: Vec<String> = (0..count).map(|i| format!("cold:{i}")).collect();
        let subscribed = if followed { names.len() } else { 0 };
        for chunk in names[..subscribed].chunks(PER_CONNECTION) {
            let mut socket = connect(subscribe_at).await?;
            let subscribe = serde_json::json!({"type": "Subscribe", "channels": chunk});
            socket.send(Message::text(subscribe.to_string())).await?;
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(30), socket.next())
                    .await
                    .context("no answer to a cold Subscribe in 30 s")?;
                match frame {
                    Some(Ok(Message::Text(text))) if text.contains(r#""type":"Subscribed""#) => {
                        break;
                    }
                    Some(Ok(Message::Text(text))) if text.contains(r#""type":"Error""#) => {
                        bail!("a cold Subscribe was refused: {text}")
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("the hub closed a cold subscriber"),
                }
            }
            let stop = stop.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        frame = socket.next() => match frame {
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return Err(e.into()),
                            None => bail!("the hub closed a cold subscriber"),
                        },
                    }
                }
            });
        }
        if count > 0 && rate > 0.0 {
            let socket = connect(publish_at).await?;
            let stop = stop.clone();
            tasks.spawn(publish(socket, names, rate, stop));
        }
        Ok(Self { tasks, stop })
    }

    /// Stops publishing and closes the connections; the first failure of any, if one failed.
    pub(crate) async fn stop(mut self) -> Result<()> {
        self.stop.cancel();
        let mut result = Ok(());
        while let Some(done) = self.tasks.join_next().await {
            if let Ok(Err(e)) = done
                && result.is_ok()
            {
                result = Err(e);
            }
        }
        result
    }
}

type Socket = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn connect(addr: SocketAddr) -> Result<Socket> {
    let stream = TcpStream::connect(addr).await?;
    let (socket, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), stream).await?;
    Ok(socket)
}

/// Publishes on `names` round robin at `rate` per second until `stop`, reading (and
/// dropping) what the hub answers.
async fn publish(
    socket: Socket,
    names: Vec<String>,
    rate: f64,
    stop: CancellationToken,
) -> Result<()> {
    let (mut sink, mut answers) = socket.split();
    let mut tick = tokio::time::interval(TICK);
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            answer = answers.next() => match answer {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the hub closed the cold publisher"),
            },
            _ = tick.tick() => {}
        }
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let channel = &names[(sent % names.len() as u64) as usize];
            let publish = serde_json::json!({"type": "Publish", "channel": channel, "data": sent});
            sink.feed(Message::text(publish.to_string())).await?;
            sent += 1;
        }
        sink.flush().await?;
    }
}
