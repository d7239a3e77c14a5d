# Remora: one Makefile for both programs, the tests, the fuzzers and the benchmarks.
#   make                 build/remora-proxy, build/remora-injector, test tools
#   make test            everything: gcc + clang builds, unit + integration suites under ASan+UBSan
#                        (run `make deps` once before; `make test` installs nothing)
#   make SANITIZE=address,undefined BUILD=build/asan   a sanitized tree
#   make fuzz            libFuzzer targets, each run briefly (FUZZ_SECONDS)
#   make bench           perf/ benchmarks against haproxy, nginx and direct
#   make deps            install the Debian packages all of the above need
#   make lint            clang-format check and banned calls
#   make image           the OCI images in build/images/ (IMAGE_REPO, IMAGE_TAG; docs/install.md)
#   make image-test      pods run from those images with podman (test/integration/image.sh)

BUILD    ?= build
CC       ?= cc
OPT      ?= -O2
SANITIZE ?=
FUZZ_SECONDS ?= 15

LLHTTP_SRC = /usr/share/llhttp
LLHTTP_INC = /usr/share/include/llhttp

WARN = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
       -Wformat-security -Wvla -Wundef
CPPFLAGS_ALL = -D_GNU_SOURCE -I. -I$(LLHTTP_INC)
# Build paths never reach the binaries (reproducible images: docs/install.md).
REPRO        = -ffile-prefix-map=$(CURDIR)=.
CFLAGS_ALL   = -std=c11 -g $(OPT) $(REPRO) $(WARN) -MMD -MP $(CFLAGS)
LDFLAGS_ALL  = $(LDFLAGS)
ifneq ($(SANITIZE),)
CFLAGS_ALL  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS_ALL += -fsanitize=$(SANITIZE)
endif

MBEDTLS_LIBS  = -lmbedtls -lmbedx509 -lmbedcrypto
PROXY_LIBS    = -levent -lnghttp2 $(MBEDTLS_LIBS) -ljansson -lm
INJECTOR_LIBS = -lmicrohttpd -lgnutls -levent $(MBEDTLS_LIBS) -ljansson -lm
TEST_LIBS     = -lcmocka -lmicrohttpd -lgnutls -levent -lnghttp2 $(MBEDTLS_LIBS) -ljansson -lm

# Sources are found, not listed: a new module is a new file.
COMMON_SRCS   = $(wildcard common/*.c)
CERTS_SRCS    = $(filter-out certs/main.c,$(wildcard certs/*.c))
PROXY_SRCS    = $(filter-out proxy/main.c,$(wildcard proxy/*.c))
INJECTOR_SRCS = $(filter-out injector/main.c,$(wildcard injector/*.c))
LLHTTP_SRCS   = $(LLHTTP_SRC)/api.c $(LLHTTP_SRC)/http.c $(LLHTTP_SRC)/llhttp.c
UPSTREAM_SRCS = $(wildcard test/upstream/*.c)
UNIT_SRCS     = $(wildcard test/unit/*/test_*.c)
FUZZ_SRCS     = $(wildcard test/fuzz/fuzz_*.c)

OBJ = $(BUILD)/obj
obj = $(patsubst %.c,$(OBJ)/%.o,$(1))

LIB_COMMON   = $(BUILD)/lib/libremora-common.a
LIB_CERTS    = $(BUILD)/lib/libremora-certs.a
LIB_PROXY    = $(BUILD)/lib/libremora-proxy.a
LIB_INJECTOR = $(BUILD)/lib/libremora-injector.a
LIB_LLHTTP   = $(BUILD)/lib/libllhttp.a

BINS = $(BUILD)/remora-proxy
ifneq ($(wildcard injector/main.c),)
BINS += $(BUILD)/remora-injector
endif
ifneq ($(wildcard certs/main.c),)
BINS += $(BUILD)/remora-certs
endif
ifneq ($(UPSTREAM_SRCS),)
BINS += $(BUILD)/test-upstream
endif
UNIT_BINS = $(patsubst test/unit/%.c,$(BUILD)/test/unit/%,$(UNIT_SRCS))

.PHONY: all perf-bins unit-bins test test-all test-gcc test-clang test-asan fuzz bench policy-bench deps lint clean demo
all: $(BINS)

$(OBJ)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -c $< -o $@

# llhttp is Debian's C sources, compiled here, never copied in; its own warnings are not ours.
$(OBJ)/llhttp/%.o: $(LLHTTP_SRC)/%.c
	@mkdir -p $(dir $@)
	$(CC) -I$(LLHTTP_INC) -g $(OPT) $(REPRO) -w $(filter -fsanitize=%,$(CFLAGS_ALL)) -c $< -o $@

$(BUILD)/lib/%.a:
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $^

$(LIB_COMMON): $(call obj,$(COMMON_SRCS))
$(LIB_CERTS): $(call obj,$(CERTS_SRCS))
$(LIB_PROXY): $(call obj,$(PROXY_SRCS))
$(LIB_INJECTOR): $(call obj,$(INJECTOR_SRCS))
$(LIB_LLHTTP): $(patsubst $(LLHTTP_SRC)/%.c,$(OBJ)/llhttp/%.o,$(LLHTTP_SRCS))

ALL_LIBS = $(LIB_PROXY) $(LIB_INJECTOR) $(LIB_CERTS) $(LIB_COMMON) $(LIB_LLHTTP)

$(BUILD)/remora-proxy: $(call obj,proxy/main.c) $(LIB_PROXY) $(LIB_CERTS) $(LIB_COMMON) $(LIB_LLHTTP)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(PROXY_LIBS)

$(BUILD)/remora-injector: $(call obj,injector/main.c) $(LIB_INJECTOR) $(LIB_CERTS) $(LIB_COMMON) $(LIB_LLHTTP)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(INJECTOR_LIBS)

$(BUILD)/remora-certs: $(call obj,certs/main.c) $(LIB_CERTS) $(LIB_COMMON)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(MBEDTLS_LIBS) -ljansson -lm

$(BUILD)/test-upstream: $(call obj,$(UPSTREAM_SRCS)) $(LIB_COMMON) $(LIB_LLHTTP)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ -levent -lnghttp2 -lmbedcrypto -ljansson -lm

# A unit test links every component archive: one that #includes a .c file
# to reach its statics simply does not pull that object from the archive.
$(BUILD)/test/unit/%: $(OBJ)/test/unit/%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $< $(ALL_LIBS) $(TEST_LIBS)

unit-bins: $(UNIT_BINS)

# ---- tests ---------------------------------------------------------------
# gcc and clang builds must be warning-free; the suites run on the ASan+UBSan tree.
# The packages come from `make deps`, run once beforehand (CI runs both).
ASAN_BUILD = build/asan
test: test-all

test-all: test-gcc test-clang test-asan
	REMORA_BUILD=$(ASAN_BUILD) ./test/run.sh

test-gcc:
	$(MAKE) --no-print-directory CC=gcc BUILD=build all

test-clang:
	$(MAKE) --no-print-directory CC=clang BUILD=build/clang all unit-bins

test-asan:
	$(MAKE) --no-print-directory CC=gcc BUILD=$(ASAN_BUILD) OPT=-O1 SANITIZE=address,undefined all unit-bins

# ---- fuzzing ---------------------------------------------------------------
FUZZ_BUILD = build/fuzz
fuzz:
	$(MAKE) --no-print-directory CC=clang BUILD=$(FUZZ_BUILD) OPT=-O1 \
	    SANITIZE=address,undefined CFLAGS=-fsanitize=fuzzer-no-link fuzz-bins
	./test/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

FUZZ_BINS = $(patsubst test/fuzz/%.c,$(BUILD)/fuzz-bin/%,$(FUZZ_SRCS))
fuzz-bins: $(FUZZ_BINS)
$(BUILD)/fuzz-bin/%: $(OBJ)/test/fuzz/%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -fsanitize=fuzzer -o $@ $< $(ALL_LIBS) $(TEST_LIBS)

# ---- perf/ benchmark tools (not part of `all` nor `make test`; docs/performance.md) ----
# perf-micro: policy decision and LB pick cost, linked against the proxy archive.
# perf-load: fixed-rate HTTP/1.1 + h2c load generator (latency from the intended send time).
# perf-floor: a proxy that only moves bytes, the CPU floor under every HTTP proxy (perf/floor.c).
PERF_BINS = $(BUILD)/perf-micro $(BUILD)/perf-load $(BUILD)/perf-floor
perf-bins: $(PERF_BINS)
$(BUILD)/perf-micro: $(call obj,perf/micro.c) $(LIB_PROXY) $(LIB_CERTS) $(LIB_COMMON) $(LIB_LLHTTP)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(PROXY_LIBS)
$(BUILD)/perf-load: $(call obj,perf/loadgen.c) $(LIB_LLHTTP)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ -levent -lnghttp2
$(BUILD)/perf-floor: $(call obj,perf/floor.c)
	$(CC) $(LDFLAGS_ALL) -o $@ $^
# ---- end of perf/ tools -------------------------------------------------------

# Policy decision cost by policy shape and size (perf/policy_bench.c, docs/policy.md).
policy-bench: $(BUILD)/policy-bench
	$(BUILD)/policy-bench
$(BUILD)/policy-bench: $(call obj,perf/policy_bench.c) $(LIB_PROXY) $(LIB_CERTS) $(LIB_COMMON) $(LIB_LLHTTP)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(PROXY_LIBS)

# ---- the rest --------------------------------------------------------------
bench: all perf-bins
	./perf/bench.sh

# Discovery at 1k/10k/100k endpoints against the fake API server (perf/bench-discovery.sh).
.PHONY: bench-discovery
bench-discovery: all
	./perf/bench-discovery.sh

demo:  # test/demo.sh runs make deps and make itself
	./test/demo.sh

deps:
	@./scripts/deps.sh

# ---- container images (docs/install.md) ------------------------------------------
# From the release build only; no base image, nothing pulled. Same tree, same digest.
IMAGE_REPO ?= ghcr.io/remora-mesh
IMAGE_TAG  ?= 0.1.0
.PHONY: image image-test
image: all
	./scripts/image.sh --build $(BUILD) --out $(BUILD)/images --repo $(IMAGE_REPO) --tag $(IMAGE_TAG)

image-test: image
	REMORA_BUILD=$(BUILD) ONLY=integration/image ./test/run.sh

lint:
	@./scripts/lint.sh

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
