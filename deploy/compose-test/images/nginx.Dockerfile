# Stand-in for nginx:1.28-alpine: Debian trixie's nginx (1.26) laid out as upstream:
# /etc/nginx/nginx.conf, mime.types and conf.d/, run in the foreground. Upstream's build sets
# the workers' user (nginx); Debian's sets none, so the command names www-data, as a built-in
# default would (the shipped nginx.conf leaves `user` to the image).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off; user www-data;"]
