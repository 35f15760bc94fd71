//! The framework's ceiling for the directory load benchmark
//! (`scripts/bench-directory.sh`): the smallest axum server, built with the
//! same axum features and the same multi-threaded tokio runtime as the
//! `openred` binary, so that the gap between it and the directory is the
//! directory's own work (routing, middleware, the cache, JSON).
//!
//! ```text
//! hello_world [127.0.0.1:PORT]
//! ```
//!
//! Prints `listening on http://ADDR` once it accepts connections, like
//! `openred directory serve`, so that scripts may bind port 0.

use axum::routing::get;
use axum::Router;

fn main() -> anyhow::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    // The same builder as crates/openred/src/main.rs: one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        println!("listening on http://{}", listener.local_addr()?);
        let app = Router::new().route("/", get(|| async { "Hello, World!" }));
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
