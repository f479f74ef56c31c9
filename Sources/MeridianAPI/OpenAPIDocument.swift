/// The OpenAPI 3 document of the v1 API (`Sources/MeridianAPI/openapi.yaml`, embedded at build time): what the
/// node serves at `/openapi.yaml`, and what its tests prove against the router.
public enum OpenAPIDocument {
    /// The document's bytes (YAML).
    public static var yaml: [UInt8] { PackageResources.openapi_yaml }
}
