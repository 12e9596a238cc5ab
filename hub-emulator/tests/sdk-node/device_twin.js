#!/usr/bin/env node
// A device built on Microsoft's Node device SDK (azure-iot-device + azure-iot-device-mqtt),
// remote-controlled by hub-emulator/tests/sdk_node.rs to check the emulator against the SDK.
//
// The SDK is used unmodified, through its public API. It dials mqtts://<GatewayHostName, else
// HostName>:8883 (transport Mqtt) or wss://<same>:443/$iothub/websocket (transport MqttWs); the
// test binds the emulator there and makes Node trust the emulator's certificate with
// NODE_EXTRA_CA_CERTS. Modules resolve from NODE_PATH (the installed SDK).
//
// Protocol (JSON lines): one command per line on stdin, each answered by one line
// {"reply": OP, "ok": true, ...} or {"reply": OP, "ok": false, "error": NAME, "detail": MESSAGE}.
// Independently, SDK callbacks print events:
//   {"event": "hello", "sdk_version": V, "mqtt_version": V}   once, at start
//   {"event": "desired", "patch": {...}}    each desired notification (and the initial document)
//   {"event": "bye"}                        last line
// Commands:
//   {"op": "open", "connection_string": S, "websocket": B}
//                                            Client.fromConnectionString(S, B ? MqttWs : Mqtt)
//                                            .open()
//   {"op": "get_twin"}                       -> "twin": {"desired": {...}, "reported": {...}};
//                                            also starts the desired events
//   {"op": "patch_reported", "patch": {...}} twin.properties.reported.update(patch)
//   {"op": "exit"}                           closes the client and exits 0 (so does end of stdin)
'use strict';

const readline = require('readline');
const { Client } = require('azure-iot-device');
const { Mqtt, MqttWs } = require('azure-iot-device-mqtt');

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// The SDK's twin keeps helper functions in its property objects: send plain JSON only.
function plain(props) {
  return JSON.parse(JSON.stringify(props));
}

let client = null;
let twin = null;

const ops = {
  async open({ connection_string: cs, websocket }) {
    client = Client.fromConnectionString(cs, websocket ? MqttWs : Mqtt);
    client.on('error', (err) => process.stderr.write(`client error: ${err}\n`));
    await client.open();
    return {};
  },
  async get_twin() {
    if (!twin) {
      twin = await client.getTwin();
      twin.on('properties.desired', (patch) => emit({ event: 'desired', patch: plain(patch) }));
    } else {
      await new Promise((resolve, reject) => twin.get((err) => (err ? reject(err) : resolve())));
    }
    return {
      twin: { desired: plain(twin.properties.desired), reported: plain(twin.properties.reported) },
    };
  },
  async patch_reported({ patch }) {
    await new Promise((resolve, reject) =>
      twin.properties.reported.update(patch, (err) => (err ? reject(err) : resolve())),
    );
    return {};
  },
  async exit() {
    if (client) {
      await client.close();
    }
    emit({ event: 'bye' });
    process.exit(0);
  },
};

async function main() {
  emit({
    event: 'hello',
    sdk_version: require('azure-iot-device/package.json').version,
    mqtt_version: require('azure-iot-device-mqtt/package.json').version,
  });
  const lines = readline.createInterface({ input: process.stdin });
  // One command at a time, in order.
  for await (const line of lines) {
    if (!line.trim()) continue;
    const command = JSON.parse(line);
    const op = ops[command.op];
    try {
      if (!op) throw new Error(`unknown op ${command.op}`);
      emit({ reply: command.op, ok: true, ...(await op(command)) });
    } catch (err) {
      emit({
        reply: command.op,
        ok: false,
        error: (err && err.name) || 'Error',
        detail: String((err && err.message) || err),
      });
    }
  }
  await ops.exit();
}

main().catch((err) => {
  process.stderr.write(`fatal: ${(err && err.stack) || err}\n`);
  process.exit(1);
});
