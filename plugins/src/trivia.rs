//! Trivia: `!trivia` in chat starts a round; the first right answer wins.

use std::sync::Arc;

use parking_lot::Mutex;
use switchboard::{Event, Handler, HandlerResult};
use switchboard_host::{Plugin, PluginContext, PluginError};

use crate::{payload, ChatMessage, TriviaAnswer, TriviaEnded, TriviaStarted};

/// The questions, with their answers.
const QUESTIONS: &[(&str, &str)] = &[
    ("What is 2 + 2?", "4"),
    ("What colour is the sky on a clear day?", "blue"),
    ("How many legs has a spider?", "8"),
    ("What is the capital of France?", "paris"),
    ("Which planet is the largest?", "jupiter"),
];

#[derive(Debug, Default)]
struct Game {
    rounds: u64,
    current: Option<(u64, &'static str)>,
}

/// The trivia plugin. Publishes `trivia.started`, `trivia.answer` and
/// `trivia.ended`; listens to `chat.message`.
#[derive(Debug, Default)]
pub struct TriviaPlugin {
    game: Arc<Mutex<Game>>,
}

impl TriviaPlugin {
    /// A trivia plugin with no round played.
    pub fn new() -> TriviaPlugin {
        TriviaPlugin::default()
    }
}

impl Plugin for TriviaPlugin {
    fn name(&self) -> &str {
        "trivia"
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        let (game, me) = (self.game.clone(), ctx.clone());
        let handler = Handler::sync(move |event: &Event| on_message(&game, &me, event));
        ctx.subscribe("chat.message", handler, ())?;
        Ok(())
    }
}

fn on_message(game: &Mutex<Game>, me: &PluginContext, event: &Event) -> HandlerResult {
    let Some(message) = payload::<ChatMessage>(event) else { return Ok(()) };
    let text = message.text.trim();
    if text == "!trivia" {
        let started = {
            let mut game = game.lock();
            if game.current.is_some() {
                return Ok(());
            }
            game.rounds += 1;
            let (question, answer) = QUESTIONS[(game.rounds as usize - 1) % QUESTIONS.len()];
            game.current = Some((game.rounds, answer));
            TriviaStarted { round: game.rounds, question: question.to_owned(), timeout: 30 }
        };
        me.publish_typed("trivia.started", started)?;
        return Ok(());
    }
    let outcome = {
        let mut game = game.lock();
        let Some((round, answer)) = game.current else { return Ok(()) };
        let correct = text.eq_ignore_ascii_case(answer);
        if correct {
            game.current = None;
        }
        (round, answer, correct)
    };
    let (round, answer, correct) = outcome;
    let answered = TriviaAnswer { round, user: message.user.clone(), correct };
    me.publish_typed("trivia.answer", answered)?;
    if correct {
        let ended = TriviaEnded { round, winner: Some(message.user), answer: answer.to_owned() };
        me.publish_typed("trivia.ended", ended)?;
    }
    Ok(())
}
