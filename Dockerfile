# Caddy with the Backstage proxy module, built the way Caddy's images document
# for plugins: xcaddy in caddy:<version>-builder, the binary copied into
# caddy:<version>. Keep the three Caddy versions below in step with go.mod.
#
#   docker build -t caddy-backstage-proxy .
#   docker run --rm -p 7007:7007 -v "$PWD/app-config.yaml:/etc/backstage/app-config.yaml:ro" \
#     caddy-backstage-proxy
#
# (No container runtime was available where this file was written: CI proves
# the xcaddy command below by running it outside a container; see .ci/run.)

FROM caddy:2.11.9-builder AS builder

# go.mod says go 1.26.0. The golang images (which the builder is based on) set
# GOTOOLCHAIN=local; auto lets Go fetch the 1.26 toolchain from the module
# proxy if this builder's Go is older, and changes nothing if it is not.
ENV GOTOOLCHAIN=auto

WORKDIR /src
COPY . .
# The README's build command, exactly ("Building"). It writes ./caddy.
RUN xcaddy build v2.11.9 --with github.com/caddy-backstage/caddy-backstage-proxy@v0.0.0=.

FROM caddy:2.11.9

COPY --from=builder /src/caddy /usr/bin/caddy

# Backstage's port. The config is an app-config.yaml: mount it (with any
# app-config.<env>.yaml or app-config.local.yaml next to it) at this path.
EXPOSE 7007
CMD ["caddy", "run", "--adapter", "backstage", "--config", "/etc/backstage/app-config.yaml"]
