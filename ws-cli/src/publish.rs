//! `ws-cli publish`: DATA, or each line of stdin, published to a channel with
//! acknowledgements; progress and a summary on stderr.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

use crate::connect::{Reach, connect};

/// `ws-cli publish URL CHANNEL [DATA]`
#[derive(Debug, clap::Args)]
pub(crate) struct PublishArgs {
    /// The hub: ws:// or wss://.
    url: String,
    /// The channel to publish to.
    channel: String,
    /// The data: JSON, or any other text, sent as a JSON string. Without it, each non-empty
    /// line of stdin is one publication.
    data: Option<String>,
    /// Publications awaiting their acknowledgement at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    window: u64,
}

/// What came back for the publications so far.
#[derive(Debug, Default)]
struct Tally {
    published: u64,
    refused: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
}

/// Publishes, then prints the summary; fails if anything was refused.
pub(crate) async fn run(args: &PublishArgs, reach: Reach<'_>) -> Result<ExitCode> {
    let client = connect(&args.url, reach, false).await?;
    let mut tally = Tally::default();
    let mut in_flight = FuturesOrdered::new();
    let mut progress_at = Instant::now() + Duration::from_secs(1);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut single = args.data.clone();
    let mut number = 0u64;
    loop {
        let line = match single.take() {
            Some(data) => Some(data),
            None if args.data.is_some() => None,
            None => lines.next_line().await?,
        };
        let Some(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        number += 1;
        let json = as_json(&line);
        let (client, channel) = (client.clone(), args.channel.clone());
        in_flight.push_back(async move { (number, client.publish_json(&channel, &json).await) });
        while in_flight.len() as u64 >= args.window {
            if let Some(done) = in_flight.next().await {
                tally.note(done);
            }
        }
        if Instant::now() >= progress_at {
            eprintln!("published {}, refused {}", tally.published, tally.refused);
            progress_at = Instant::now() + Duration::from_secs(1);
        }
    }
    while let Some(done) = in_flight.next().await {
        tally.note(done);
    }
    client.close().await;
    let seqs = match (tally.first_seq, tally.last_seq) {
        (Some(first), Some(last)) if first == last => format!(", seq {first}"),
        (Some(first), Some(last)) => format!(", seqs {first} to {last}"),
        _ => String::new(),
    };
    eprintln!(
        "published {}, refused {}{seqs}",
        tally.published, tally.refused
    );
    Ok(if tally.refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

impl Tally {
    fn note(&mut self, (number, outcome): (u64, ws_client::Result<u64>)) {
        match outcome {
            Ok(seq) => {
                self.published += 1;
                self.first_seq = Some(self.first_seq.map_or(seq, |first| first.min(seq)));
                self.last_seq = Some(self.last_seq.map_or(seq, |last| last.max(seq)));
            }
            Err(error) => {
                self.refused += 1;
                eprintln!("publication {number} refused: {error}");
            }
        }
    }
}

/// `text` if it is one JSON value, otherwise `text` as a JSON string.
fn as_json(text: &str) -> String {
    match serde_json::from_str::<&serde_json::value::RawValue>(text) {
        Ok(_) => text.to_owned(),
        Err(_) => serde_json::Value::String(text.to_owned()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_is_not_json_goes_as_a_string() {
        assert_eq!(as_json(r#"{"price":1}"#), r#"{"price":1}"#);
        assert_eq!(as_json("42"), "42");
        assert_eq!(as_json("hello \"you\""), r#""hello \"you\"""#);
    }
}
