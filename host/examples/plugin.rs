//! A plugin: it subscribes and publishes through its context, which carries
//! its name; unloading it removes everything it subscribed.
//!
//! Run with `cargo run -p switchboard-host --example plugin`.

use switchboard::{Bus, Event, Handler, HistoryQuery};
use switchboard_host::{Plugin, PluginContext, PluginError, PluginManager};

/// Greets every user who joins, as the plugin "greeter".
struct Greeter {
    greeting: String,
}

impl Plugin for Greeter {
    fn name(&self) -> &str {
        "greeter"
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        // A clone of the context publishes as the plugin from its handler.
        let (me, greeting) = (ctx.clone(), self.greeting.clone());
        ctx.subscribe(
            "user.joined",
            Handler::sync(move |event: &Event| {
                let user = event.data().as_str().unwrap_or("stranger");
                me.publish("greeter.said", format!("{greeting}, {user}!").into())?;
                Ok(())
            }),
            (),
        )?;
        ctx.publish("greeter.ready", serde_json::Value::Null)?; // `?`: PluginError from PublishError
        Ok(())
    }

    fn teardown(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        ctx.publish("greeter.gone", serde_json::Value::Null)?;
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = PluginManager::new(Bus::builder().history_size(100).build()?);
    manager.load(Greeter { greeting: "Welcome".into() })?;
    manager.bus().publish(Event::new("user.joined", "ada".into(), "chat"))?;
    manager.bus().flush();
    for info in manager.list() {
        println!("{} {}: {:?}", info.name, info.version, info.subscriptions);
    }
    manager.unload("greeter")?;
    for event in manager.bus().history(HistoryQuery::new().matching("greeter.*"))?.iter().rev() {
        println!("{} from {}: {}", event.name(), event.source(), event.data());
    }
    manager.shutdown();
    Ok(())
}
