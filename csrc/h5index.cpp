#include "h5index.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace bulkformer {
namespace {

constexpr uint64_t kUndef = ~uint64_t{0};  // HDF5's undefined address

uint64_t le(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY);
    if (fd_ < 0) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
    struct stat st;
    if (::fstat(fd_, &st) != 0) {
      ::close(fd_);
      throw std::runtime_error(path + ": cannot stat: " + std::strerror(errno));
    }
    size_ = static_cast<uint64_t>(st.st_size);
  }
  ~Reader() { ::close(fd_); }
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  // Reads n bytes at addr into buf (resized); throws when the range lies outside the file.
  void read(uint64_t addr, uint64_t n, std::vector<uint8_t>& buf, const char* what) const {
    if (addr == kUndef || addr > size_ || n > size_ - addr)
      throw std::runtime_error(path_ + ": " + what + " at byte " + std::to_string(addr) +
                               " lies past the end of the file (corrupt file?)");
    buf.resize(static_cast<size_t>(n));
    uint64_t done = 0;
    while (done < n) {
      ssize_t r = ::pread(fd_, buf.data() + done, static_cast<size_t>(n - done),
                          static_cast<off_t>(addr + done));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0)
        throw std::runtime_error(path_ + ": read error in " + what + ": " +
                                 (r < 0 ? std::strerror(errno) : "unexpected end of file"));
      done += static_cast<uint64_t>(r);
    }
  }
  // Reads up to n bytes at addr (fewer at the end of the file).
  void read_upto(uint64_t addr, uint64_t n, std::vector<uint8_t>& buf, const char* what) const {
    if (addr == kUndef || addr >= size_)
      throw std::runtime_error(path_ + ": " + what + " at byte " + std::to_string(addr) +
                               " lies past the end of the file (corrupt file?)");
    read(addr, std::min(n, size_ - addr), buf, what);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

struct Layout {
  bool found = false;
  int version = 0, cls = -1;
  uint64_t btree = kUndef;
  std::vector<uint64_t> dims;  // chunk dims + element size
};

// Parses one data layout message body.
void parse_layout(const uint8_t* p, uint64_t n, Layout* L) {
  if (n < 2) return;
  L->found = true;
  L->version = p[0];
  L->cls = p[1];
  if (L->version != 3 || L->cls != 2 || n < 3) return;
  const int nd = p[2];
  if (n < 3u + 8u + 4u * static_cast<uint64_t>(nd)) {
    L->found = false;
    return;
  }
  L->btree = le(p + 3, 8);
  for (int i = 0; i < nd; ++i) L->dims.push_back(le(p + 11 + 4 * i, 4));
}

// Walks the messages of an object header (v1 or v2, with continuation blocks) for the data
// layout message. Offsets and lengths are 8 bytes (checked by the caller).
Layout find_layout(const Reader& f, uint64_t addr) {
  Layout L;
  std::vector<uint8_t> b;
  f.read(addr, 16, b, "object header");
  struct Block {
    uint64_t addr, len;
  };
  std::vector<Block> todo;
  bool v2 = false, v2_order = false;
  if (std::memcmp(b.data(), "OHDR", 4) == 0) {
    v2 = true;
    const uint8_t flags = b[5];
    if (b[4] != 2) throw std::runtime_error(f.path() + ": object header version " +
                                            std::to_string(b[4]) + " is not 2");
    uint64_t pos = 6 + ((flags & 0x20) ? 16 : 0) + ((flags & 0x10) ? 4 : 0);
    const int w = 1 << (flags & 3);
    f.read(addr, pos + w, b, "object header");
    const uint64_t len = le(b.data() + pos, w);
    v2_order = flags & 0x04;
    todo.push_back({addr + pos + w, len});
  } else if (b[0] == 1) {
    todo.push_back({addr + 16, le(b.data() + 8, 4)});
  } else {
    throw std::runtime_error(f.path() + ": no object header at byte " + std::to_string(addr));
  }
  const uint64_t hdr = v2 ? (4u + (v2_order ? 2u : 0u)) : 8u;
  for (size_t bi = 0; bi < todo.size() && bi < 4096; ++bi) {
    const Block blk = todo[bi];
    if (blk.len > (uint64_t{1} << 30))
      throw std::runtime_error(f.path() + ": object header block too large (corrupt file?)");
    f.read(blk.addr, blk.len, b, "object header block");
    uint64_t pos = 0, end = blk.len;
    if (v2 && bi > 0) {  // continuation block: "OCHK" ... checksum
      if (blk.len < 8 || std::memcmp(b.data(), "OCHK", 4) != 0)
        throw std::runtime_error(f.path() + ": bad object header continuation block");
      pos = 4;
      end = blk.len - 4;
    }
    while (pos + hdr <= end) {
      const uint8_t* m = b.data() + pos;
      const uint32_t type = v2 ? m[0] : static_cast<uint32_t>(le(m, 2));
      const uint64_t size = v2 ? le(m + 1, 2) : le(m + 2, 2);
      const uint64_t body = pos + hdr;
      if (body + size > end) break;  // gap at the end of a v2 chunk
      if (type == 0x0008) {
        parse_layout(b.data() + body, size, &L);
        if (L.found) return L;
      } else if (type == 0x0010 && size >= 16) {  // continuation: offset, length
        todo.push_back({le(b.data() + body, 8), le(b.data() + body + 8, 8)});
      }
      pos = body + size;
    }
  }
  return L;
}

struct Walker {
  const Reader& f;
  int nd;  // dimensionality of keys (rank + 1)
  int64_t dims[2], chunk[2], grid1;
  const int64_t* want;
  int64_t n_want;
  ChunkRecords* out;

  int64_t key_lin(const uint8_t* k) const {
    const uint64_t o0 = le(k + 8, 8), o1 = le(k + 16, 8), oe = le(k + 24, 8);
    if (oe != 0 || o0 % chunk[0] || o1 % chunk[1] || o0 >= static_cast<uint64_t>(dims[0]) ||
        o1 >= static_cast<uint64_t>(dims[1]))
      return -1;
    return static_cast<int64_t>(o0 / chunk[0]) * grid1 + static_cast<int64_t>(o1 / chunk[1]);
  }

  // true when a wanted id lies in [lo, hi)
  bool wanted(int64_t lo, int64_t hi) const {
    if (!want) return true;
    const int64_t* p = std::lower_bound(want, want + n_want, lo);
    return p != want + n_want && *p < hi;
  }

  void node(uint64_t addr, int expect_level) {
    const uint64_t ksize = 8 + 8 * static_cast<uint64_t>(nd);
    // one read for the usual node (HDF5's default K = 32: 24 + 65 keys + 64 children = 3,136
    // bytes), a second one only for larger nodes
    std::vector<uint8_t> body;
    f.read_upto(addr, 24 + 65 * ksize + 64 * 8, body, "chunk B-tree node");
    if (body.size() < 24 || std::memcmp(body.data(), "TREE", 4) != 0 || body[4] != 1)
      throw std::runtime_error(f.path() + ": no chunk B-tree node at byte " +
                               std::to_string(addr) + " (corrupt file?)");
    const int level = body[5];
    const uint64_t n = le(body.data() + 6, 2);
    if ((expect_level >= 0 && level != expect_level) || level > 64)
      throw std::runtime_error(f.path() + ": chunk B-tree node at byte " + std::to_string(addr) +
                               " has level " + std::to_string(level) + " (corrupt file?)");
    ++out->nodes_read;
    const uint64_t need = 24 + n * (ksize + 8) + ksize;
    if (body.size() < need) f.read(addr, need, body, "chunk B-tree node");
    body.erase(body.begin(), body.begin() + 24);
    std::vector<int64_t> lin(n + 1);
    for (uint64_t i = 0; i < n; ++i) {
      lin[i] = key_lin(body.data() + i * (ksize + 8));
      if (lin[i] < 0 || (i > 0 && lin[i] <= lin[i - 1]))
        throw std::runtime_error(f.path() + ": chunk B-tree node at byte " +
                                 std::to_string(addr) + " holds an invalid key (corrupt file?)");
    }
    lin[n] = std::numeric_limits<int64_t>::max();  // the right key is not relied upon
    for (uint64_t i = 0; i < n; ++i) {
      const uint8_t* k = body.data() + i * (ksize + 8);
      const uint64_t child = le(k + ksize, 8);
      if (level == 0) {
        if (!wanted(lin[i], lin[i] + 1)) continue;
        out->lin.push_back(lin[i]);
        out->addr.push_back(static_cast<int64_t>(child));
        out->size.push_back(static_cast<int64_t>(le(k, 4)));
        out->mask.push_back(static_cast<uint32_t>(le(k + 4, 4)));
      } else if (wanted(lin[i], lin[i + 1])) {
        node(child, level - 1);
      }
    }
  }
};

}  // namespace

bool read_chunk_btree(const std::string& path, uint64_t header_addr, const int64_t* dims,
                      const int64_t* chunk, int64_t elem_size, const int64_t* want,
                      int64_t n_want, ChunkRecords* out, std::string* why) {
  Reader f(path);
  std::vector<uint8_t> sb;
  f.read(0, 48, sb, "superblock");
  static const uint8_t kSig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  if (std::memcmp(sb.data(), kSig, 8) != 0) {
    *why = "no HDF5 superblock at byte 0 (user block)";
    return false;
  }
  const int sver = sb[8];
  int so, sl;
  uint64_t base;
  if (sver <= 1) {
    so = sb[13];
    sl = sb[14];
    base = le(sb.data() + (sver == 0 ? 24 : 28), 8);
  } else if (sver <= 3) {
    so = sb[9];
    sl = sb[10];
    base = le(sb.data() + 12, 8);
  } else {
    *why = "superblock version " + std::to_string(sver);
    return false;
  }
  if (so != 8 || sl != 8) {
    *why = "offsets of " + std::to_string(so) + " bytes / lengths of " + std::to_string(sl);
    return false;
  }
  if (base != 0) {
    *why = "base address " + std::to_string(base);
    return false;
  }
  Layout L = find_layout(f, header_addr);
  if (!L.found) throw std::runtime_error(path + ": the dataset has no data layout message");
  if (L.cls != 2) {
    *why = "not chunked (layout class " + std::to_string(L.cls) + ")";
    return false;
  }
  if (L.version != 3) {
    *why = "data layout message version " + std::to_string(L.version) +
           " (chunk indexes other than the version-1 B-tree)";
    return false;
  }
  if (L.dims.size() != 3 || static_cast<int64_t>(L.dims[0]) != chunk[0] ||
      static_cast<int64_t>(L.dims[1]) != chunk[1] ||
      static_cast<int64_t>(L.dims[2]) != elem_size)
    throw std::runtime_error(path + ": the data layout message does not match the dataset's "
                                    "chunk shape (corrupt file?)");
  for (int64_t i = 1; i < n_want; ++i)
    if (want[i] <= want[i - 1]) throw std::invalid_argument("want must be sorted and unique");
  out->lin.clear();
  out->addr.clear();
  out->size.clear();
  out->mask.clear();
  out->nodes_read = 0;
  if (L.btree == kUndef) return true;  // nothing written yet
  Walker w{f, 3, {dims[0], dims[1]}, {chunk[0], chunk[1]},
           (dims[1] + chunk[1] - 1) / chunk[1], want, n_want, out};
  if (!want || n_want > 0) w.node(L.btree, -1);
  return true;
}

}  // namespace bulkformer
