//! The controller quorum: three members on loopback replicate the metadata log with openraft,
//! survive the loss of the active one, catch a restarted member up, and recover the image from
//! their disks when all restart.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use chronik_broker::controller::metadata::{MetadataImage, MetadataRecord, NO_LEADER};
use chronik_broker::controller::{Controller, ControllerConfig, ControllerError};

/// Elections take a second or two on loopback; a slow CI machine gets ten times that.
const QUORUM_WAIT: Duration = Duration::from_secs(20);

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

async fn start(id: u64, voters: &BTreeMap<u64, SocketAddr>, root: &Path) -> Controller {
    Controller::start(ControllerConfig {
        id,
        listen: voters[&id],
        voters: voters.clone(),
        dir: root.join(format!("controller-{id}")),
        // The test registers brokers that never heartbeat: no session may run out here.
        session_timeout: Duration::from_secs(3600),
    })
    .await
    .expect("controller starts")
}

/// Three members on free loopback ports, their data under `root`.
async fn start_quorum(root: &Path) -> (BTreeMap<u64, SocketAddr>, BTreeMap<u64, Controller>) {
    let voters: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, free_addr())).collect();
    let mut members = BTreeMap::new();
    for id in 1..=3 {
        members.insert(id, start(id, &voters, root).await);
    }
    (voters, members)
}

/// Polls `done` every 50 ms until it holds or `QUORUM_WAIT` passes.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + QUORUM_WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The active controller every running member agrees on.
async fn agreed_active(members: &BTreeMap<u64, Controller>) -> u64 {
    let mut active = None;
    wait_until("an active controller all members agree on", || {
        let seen: Vec<Option<u64>> = members.values().map(Controller::active).collect();
        active = seen[0].filter(|a| members.contains_key(a) && seen.iter().all(|s| *s == seen[0]));
        active.is_some()
    })
    .await;
    active.expect("waited for it")
}

async fn same_image(members: &BTreeMap<u64, Controller>, want: impl Fn(&MetadataImage) -> bool) {
    wait_until("every member to apply the same image", || {
        let images: Vec<MetadataImage> = members.values().map(Controller::image).collect();
        images.iter().all(|i| *i == images[0]) && want(&images[0])
    })
    .await;
}

/// Registers and unfences brokers 1..=3 and creates topic `t`, replicas [1, 2, 3].
async fn set_up_brokers(active: &Controller) {
    for broker in 1..=3 {
        active
            .propose(MetadataRecord::RegisterBroker {
                broker,
                incarnation: 7,
            })
            .await
            .expect("registered");
        let broker_epoch = active.image().broker(broker).unwrap().broker_epoch;
        active
            .propose(MetadataRecord::UnfenceBroker {
                broker,
                broker_epoch,
            })
            .await
            .expect("unfenced");
    }
    active
        .propose(MetadataRecord::CreateTopic {
            topic: "t".into(),
            topic_id: 7,
            assignment: vec![vec![1, 2, 3]],
            unclean_leader_election: false,
        })
        .await
        .expect("topic created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quorum_survives_its_active_controller_and_catches_a_restarted_one_up() {
    let root = tempfile::tempdir().unwrap();
    let (voters, mut members) = start_quorum(root.path()).await;
    let first = agreed_active(&members).await;
    set_up_brokers(&members[&first]).await;
    same_image(&members, |i| {
        i.partition("t", 0).is_some_and(|p| p.leader == 1)
    })
    .await;
    let follower = *members.keys().find(|&&id| id != first).unwrap();
    assert!(matches!(
        members[&follower]
            .propose(MetadataRecord::RegisterBroker {
                broker: 4,
                incarnation: 1,
            })
            .await,
        Err(ControllerError::NotActive(Some(a))) if a == first
    ));

    members.remove(&first).unwrap().shutdown().await;
    let second = agreed_active(&members).await;
    assert_ne!(second, first);
    let broker_epoch = members[&second].image().broker(1).unwrap().broker_epoch;
    let fence = MetadataRecord::FenceBroker {
        broker: 1,
        broker_epoch,
    };
    members[&second]
        .propose(fence.clone())
        .await
        .expect("fenced");
    same_image(&members, |i| {
        let p = i.partition("t", 0).unwrap();
        p.leader == 2 && p.leader_epoch == 1
    })
    .await;
    let stale = MetadataRecord::UnfenceBroker {
        broker: 1,
        broker_epoch: broker_epoch + 100,
    };
    assert!(matches!(
        members[&second].propose(stale).await,
        Err(ControllerError::Refused(_))
    ));

    members.insert(first, start(first, &voters, root.path()).await);
    same_image(&members, |i| i.partition("t", 0).unwrap().leader == 2).await;
    for (_, member) in members {
        member.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_restarted_whole_recovers_its_image_from_disk() {
    let root = tempfile::tempdir().unwrap();
    let (voters, mut members) = start_quorum(root.path()).await;
    let active = agreed_active(&members).await;
    set_up_brokers(&members[&active]).await;
    for broker in [1, 2, 3] {
        let broker_epoch = members[&active]
            .image()
            .broker(broker)
            .unwrap()
            .broker_epoch;
        members[&active]
            .propose(MetadataRecord::FenceBroker {
                broker,
                broker_epoch,
            })
            .await
            .expect("fenced");
    }
    same_image(&members, |i| {
        i.partition("t", 0).unwrap().leader == NO_LEADER
    })
    .await;
    let before = members[&active].image();
    for (_, member) in std::mem::take(&mut members) {
        member.shutdown().await;
    }

    for id in 1..=3 {
        members.insert(id, start(id, &voters, root.path()).await);
    }
    agreed_active(&members).await;
    same_image(&members, |i| *i == before).await;
    for (_, member) in members {
        member.shutdown().await;
    }
}
