//! Host-side bindings of `plugin-api/wit/gatewayd.wit` (world `protocol`).

wasmtime::component::bindgen!({
    world: "protocol",
    path: "../plugin-api/wit",
    imports: { "gatewayd:plugin/store": async, "gatewayd:plugin/files": async },
    exports: { default: async },
});
