# Developer shortcuts. The README's two commands are the supported entry points; these are extras.
PY ?= python3

.PHONY: build test bench asan tsan lint clean

build:            ## compile bulkformer._C in place (for running from a checkout)
	$(PY) setup.py build_ext --inplace -q

test: build
	$(PY) -m pytest -q

bench: build      ## all benchmarks, side by side (slow: generates cached files on first run)
	$(PY) -m pytest benches --benchmark-enable -s -p no:cacheprovider

lint:
	ruff check . && ruff format --check .

# The engine tests under AddressSanitizer + UBSan: builds _C with sanitizers into a separate
# directory, runs the C++-facing tests against it with the sanitizer runtime preloaded, and
# leaves the normal in-place build untouched.
ASAN_DIR := build/asan
asan:
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)
	BULKFORMER_SANITIZE=1 $(PY) setup.py build_ext -q --build-lib $(ASAN_DIR)/lib --build-temp $(ASAN_DIR)/tmp
	cp -r bulkformer $(ASAN_DIR)/pkg && rm -f $(ASAN_DIR)/pkg/_C*.so
	rm -rf $(ASAN_DIR)/pkg/kernels && mkdir -p $(ASAN_DIR)/pkg/kernels && cp kernels/*.py $(ASAN_DIR)/pkg/kernels/
	cp $(ASAN_DIR)/lib/bulkformer/_C*.so $(ASAN_DIR)/pkg/
	mkdir -p $(ASAN_DIR)/root && rm -rf $(ASAN_DIR)/root/bulkformer && mv $(ASAN_DIR)/pkg $(ASAN_DIR)/root/bulkformer
	cd $(ASAN_DIR)/root && \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	PYTHONPATH=$(CURDIR)/$(ASAN_DIR)/root $(PY) -m pytest -q -p no:cacheprovider \
	  $(CURDIR)/tests/data/test_engine.py $(CURDIR)/tests/data/test_archs4.py \
	  $(CURDIR)/tests/data/test_chunk_index.py $(CURDIR)/tests/data/test_engine_maps.py \
	  $(CURDIR)/tests/data/test_normalize_path.py -k "not byte_identical"

# The engine's threaded read under ThreadSanitizer (the worker pool, the spare-thread RowPipe,
# the value-buffer pool): a C++ driver built from csrc with -fsanitize=thread (Python cannot
# preload libtsan on these machines) reads small files at 1, 2, 3 and 6 threads and requires
# the same bytes; TSan halts on any data race.
TSAN_DIR := build/tsan
TSAN_SRC := csrc/h5reader.cpp csrc/normalize.cpp csrc/inflate.cpp csrc/h5index.cpp
tsan:
	rm -rf $(TSAN_DIR) && mkdir -p $(TSAN_DIR)
	$(CXX) -std=c++17 -O1 -g -fsanitize=thread -fno-omit-frame-pointer -pthread -Icsrc \
	  $$(if [ -e /usr/include/libdeflate.h ]; then echo -DBULKFORMER_HAVE_LIBDEFLATE=1; fi) \
	  tests/native/tsan_read.cpp $(TSAN_SRC) -o $(TSAN_DIR)/tsan_read -lz \
	  $$(if [ -e /usr/include/libdeflate.h ]; then echo -ldeflate; fi)
	$(PY) tests/native/make_cases.py $(TSAN_DIR)/cases > $(TSAN_DIR)/cases.txt
	TSAN_OPTIONS=halt_on_error=1:exitcode=66 $(TSAN_DIR)/tsan_read $$(cat $(TSAN_DIR)/cases.txt)

clean:
	rm -rf build .bench_cache bulkformer/_C*.so
