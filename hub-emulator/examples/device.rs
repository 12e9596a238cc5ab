//! A minimal IoT Hub device over MQTT (rumqttc), for trying the emulator by hand:
//! connects, subscribes, reads its twin, reports one property, then prints every desired
//! notification until Ctrl-C.
//!
//! ```text
//! cargo run -p hub-emulator --example device -- 127.0.0.1:1883 meter-01 "$TOKEN" [HOSTNAME]
//! ```

use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, device, token, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: device ADDR DEVICE_ID SAS_TOKEN [HOSTNAME]");
    };
    let hostname = rest.first().map_or("127.0.0.1", String::as_str);
    let addr: std::net::SocketAddr = addr.parse().context("ADDR must be ip:port")?;

    let mut options = MqttOptions::new(device, addr.ip().to_string(), addr.port());
    options.set_credentials(hub_emulator::mqtt_username(hostname, device), token);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .subscribe("$iothub/twin/res/#", QoS::AtLeastOnce)
        .await?;
    client
        .subscribe("$iothub/twin/PATCH/properties/desired/#", QoS::AtLeastOnce)
        .await?;
    client
        .publish(
            "$iothub/twin/GET/?$rid=1",
            QoS::AtMostOnce,
            false,
            Vec::new(),
        )
        .await?;
    client
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=2",
            QoS::AtMostOnce,
            false,
            br#"{"hello": "from the example device"}"#.to_vec(),
        )
        .await?;
    loop {
        match eventloop.poll().await.context("MQTT connection")? {
            Event::Incoming(Packet::ConnAck(ack)) => println!("connected: {:?}", ack.code),
            Event::Incoming(Packet::Publish(p)) => {
                println!("{}  {}", p.topic, String::from_utf8_lossy(&p.payload));
            }
            _ => {}
        }
    }
}
