# Versions of everything tests/ builds from Go modules. Changing one starts a new cache folder.
K8S_VERSION=v1.35.4        # must match tests/k8s/go.mod and the k8s-openapi feature in Cargo.toml
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
KUSTOMIZE_VERSION=v5.8.2        # v5.8.3 needs Go 1.27
# The OCI registry the chart tests push to. Added to a finished cache on its own
# (a marker per version), so a new version does not rebuild the control plane.
DISTRIBUTION_VERSION=v3.1.2
# Bump when the build recipe itself changes, so an old cache is not reused.
BUILD_RECIPE=r2
CACHE_TAG="k8s-$K8S_VERSION-$BUILD_RECIPE"
