//! The test server harness shared by the gRPC test files: a real server in-process on an
//! ephemeral port with the real models, and real tonic clients that send the API key.
#![allow(dead_code, clippy::unwrap_used)]

use ragd_proto::v1 as pb;
use ragd_server::Settings;
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

pub const KEY: &str = "test-key-0123456789";

pub type Auth = fn(Request<()>) -> Result<Request<()>, Status>;

pub fn with_key(mut req: Request<()>) -> Result<Request<()>, Status> {
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {KEY}")).unwrap(),
    );
    Ok(req)
}

pub struct Running {
    pub channel: Channel,
    /// The gRPC address.
    pub addr: std::net::SocketAddr,
    /// The `/metrics` address, when `metrics_listen` was set.
    pub metrics: Option<std::net::SocketAddr>,
    pub stop: Option<oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<()>,
    pub _data: tempfile::TempDir,
}

pub async fn start(data: tempfile::TempDir) -> Running {
    start_with(data, |_| {}).await
}

/// The test server over `data`, with `configure` applied to its settings.
pub async fn start_with(data: tempfile::TempDir, configure: impl FnOnce(&mut Settings)) -> Running {
    let mut settings = Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: data.path().to_path_buf(),
        ..Settings::default()
    };
    settings.api_keys.0 = vec![KEY.into()];
    settings.shutdown_grace_seconds = 5.0;
    configure(&mut settings);
    let bound = ragd_server::bind(settings).await.unwrap();
    let addr = bound.local_addr().unwrap();
    let metrics = bound.metrics_addr();
    let (stop, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        bound
            .serve(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Running {
        channel,
        addr,
        metrics,
        stop: Some(stop),
        done,
        _data: data,
    }
}

impl Running {
    pub fn collections(
        &self,
    ) -> pb::collections_client::CollectionsClient<InterceptedService<Channel, Auth>> {
        pb::collections_client::CollectionsClient::with_interceptor(
            self.channel.clone(),
            with_key as Auth,
        )
    }
    pub fn documents(
        &self,
    ) -> pb::documents_client::DocumentsClient<InterceptedService<Channel, Auth>> {
        pb::documents_client::DocumentsClient::with_interceptor(
            self.channel.clone(),
            with_key as Auth,
        )
    }
    pub fn search(&self) -> pb::search_client::SearchClient<InterceptedService<Channel, Auth>> {
        pb::search_client::SearchClient::with_interceptor(self.channel.clone(), with_key as Auth)
    }
    pub fn answer(&self) -> pb::answer_client::AnswerClient<InterceptedService<Channel, Auth>> {
        pb::answer_client::AnswerClient::with_interceptor(self.channel.clone(), with_key as Auth)
    }
    pub fn admin(&self) -> pb::admin_client::AdminClient<InterceptedService<Channel, Auth>> {
        pb::admin_client::AdminClient::with_interceptor(self.channel.clone(), with_key as Auth)
    }
    /// Creates collection `name` with default settings (panics when refused).
    pub async fn create(&self, name: &str) {
        self.collections()
            .create(pb::CreateCollectionRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.done)
            .await
            .unwrap()
            .unwrap();
    }
}

/// GET /metrics over plain HTTP/1.1.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap()
}
