# midreg service image. better-sqlite3 compiles natively, so the build stage has a toolchain and
# the runtime stage only the compiled app and production dependencies.
FROM node:20-bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci
COPY tsconfig.json tsconfig.build.json ./
COPY app ./app
COPY lib ./lib
RUN npx tsc -p tsconfig.build.json && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production MIDREG_DB=/data/midreg.sqlite
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/app ./dist/app
COPY --from=build /app/dist/lib ./dist/lib
COPY package.json ./
COPY sql ./sql
VOLUME ["/data"]
USER node
CMD ["node", "dist/app/main.js"]
