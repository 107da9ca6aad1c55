// effnet_image_tool: a test and benchmark helper, not an installed program.
//
//   effnet_image_tool decode OUT PATH...
//       Decodes each file with effnet::load_image. OUT gets, per file, uint32 width, uint32 height
//       (both 0 when it failed: the reason goes to stderr as "error: PATH: reason") and the RGB
//       bytes. Exits 0 (errors are data here).
//   effnet_image_tool encode IN.raw WIDTH HEIGHT COMPONENTS OUT.jpg [OPTION...]
//       Writes a JPEG with libjpeg from raw samples (COMPONENTS 1 gray, 3 RGB, 4 CMYK as Pillow
//       stores it: inverted), for the kinds Pillow cannot write. Options: quality=Q, ycck (4
//       components stored as YCCK), rgb (3 components stored as RGB, no YCbCr transform),
//       arith (arithmetic coding), progressive, sampling=HxV (luma factors, e.g. 1x2 for
//       4:4:0, 4x1 for 4:1:1), restart=N (restart interval in MCUs).
//   effnet_image_tool bench RESIZE CROP INTERPOLATION PATH...
//       Reads the files into memory once, then answers commands on stdin, one a line:
//       "full T" (decode + resize + center crop + normalise every file with T threads, each
//       thread a contiguous share of the files) or "decode T" (decode only), printing the
//       seconds the round took and a checksum. For bench/jpeg_throughput.py.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <jpeglib.h> // after <cstdio>: it uses size_t and FILE

#include "effnet/error.hpp"
#include "effnet/image.hpp"

namespace {

std::vector<uint8_t> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot open " + path);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

int decode(int argc, char** argv) {
    if (argc < 4) return 2;
    std::ofstream out(argv[2], std::ios::binary);
    for (int i = 3; i < argc; ++i) {
        uint32_t wh[2] = {0, 0};
        effnet::Image img;
        try {
            img = effnet::load_image(argv[i]);
            wh[0] = uint32_t(img.width);
            wh[1] = uint32_t(img.height);
        } catch (const effnet::Error& e) {
            std::cerr << "error: " << e.what() << "\n";
        }
        out.write(reinterpret_cast<const char*>(wh), sizeof(wh));
        out.write(reinterpret_cast<const char*>(img.rgb.data()), std::streamsize(img.rgb.size()));
    }
    return out ? 0 : 1;
}

int encode(int argc, char** argv) {
    if (argc < 7) return 2;
    const std::vector<uint8_t> raw = read_file(argv[2]);
    const int width = std::atoi(argv[3]), height = std::atoi(argv[4]), components = std::atoi(argv[5]);
    if (raw.size() != size_t(width) * height * components) {
        std::cerr << "error: " << argv[2] << " holds " << raw.size() << " bytes, not " << width << "x"
                  << height << "x" << components << "\n";
        return 1;
    }
    int quality = 90, h = 2, v = 2, restart = 0;
    bool ycck = false, rgb = false, arith = false, progressive = false;
    for (int i = 7; i < argc; ++i) {
        const std::string o = argv[i];
        if (o.rfind("quality=", 0) == 0)
            quality = std::atoi(o.c_str() + 8);
        else if (o == "ycck")
            ycck = true;
        else if (o == "rgb")
            rgb = true;
        else if (o == "arith")
            arith = true;
        else if (o == "progressive")
            progressive = true;
        else if (o.rfind("sampling=", 0) == 0)
            std::sscanf(o.c_str() + 9, "%dx%d", &h, &v);
        else if (o.rfind("restart=", 0) == 0)
            restart = std::atoi(o.c_str() + 8);
        else {
            std::cerr << "error: unknown option " << o << "\n";
            return 2;
        }
    }
    std::FILE* f = std::fopen(argv[6], "wb");
    if (!f) return 1;
    jpeg_compress_struct c;
    jpeg_error_mgr jerr;
    c.err = jpeg_std_error(&jerr); // errors exit: fine for a test helper
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = JDIMENSION(width);
    c.image_height = JDIMENSION(height);
    c.input_components = components;
    c.in_color_space = components == 1 ? JCS_GRAYSCALE : components == 3 ? JCS_RGB : JCS_CMYK;
    jpeg_set_defaults(&c);
    if (ycck) jpeg_set_colorspace(&c, JCS_YCCK);
    if (rgb) jpeg_set_colorspace(&c, JCS_RGB);
    jpeg_set_quality(&c, quality, TRUE);
    if (components > 1 && !rgb) {
        c.comp_info[0].h_samp_factor = h;
        c.comp_info[0].v_samp_factor = v;
        if (ycck) {
            c.comp_info[3].h_samp_factor = h;
            c.comp_info[3].v_samp_factor = v;
        }
    }
    c.arith_code = arith ? TRUE : FALSE;
    c.restart_interval = unsigned(restart);
    if (progressive) jpeg_simple_progression(&c);
    jpeg_start_compress(&c, TRUE);
    const size_t stride = size_t(width) * components;
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = const_cast<JSAMPROW>(&raw[c.next_scanline * stride]);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return std::fclose(f) == 0 ? 0 : 1;
}

int bench(int argc, char** argv) {
    if (argc < 6) return 2;
    effnet::Preprocess p;
    p.resize = std::atoi(argv[2]);
    p.crop = std::atoi(argv[3]);
    p.interpolation = argv[4];
    std::vector<std::vector<uint8_t>> files;
    std::vector<std::string> names;
    for (int i = 5; i < argc; ++i) {
        files.push_back(read_file(argv[i]));
        names.push_back(argv[i]);
    }
    const size_t plane = size_t(3) * p.crop * p.crop;
    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::string what;
        int threads = 1;
        in >> what >> threads;
        if (what == "quit") break;
        const bool full = what == "full";
        std::atomic<uint64_t> checksum{0};
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t)
            pool.emplace_back([&, t] {
                std::vector<float> out(plane);
                uint64_t sum = 0;
                const size_t begin = files.size() * t / threads, end = files.size() * (t + 1) / threads;
                for (size_t i = begin; i < end; ++i) {
                    const effnet::Image img =
                        effnet::decode_image(files[i].data(), files[i].size(), names[i]);
                    if (full) {
                        effnet::preprocess_image(img, p, out.data());
                        uint32_t bits;
                        std::memcpy(&bits, &out[plane / 2], 4);
                        sum += bits;
                    } else {
                        sum += img.rgb[img.rgb.size() / 2];
                    }
                }
                checksum += sum;
            });
        for (std::thread& th : pool) th.join();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::cout << s << " " << checksum.load() << std::endl;
    }
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    const std::string cmd = argc > 1 ? argv[1] : "";
    try {
        if (cmd == "decode") return decode(argc, argv);
        if (cmd == "encode") return encode(argc, argv);
        if (cmd == "bench") return bench(argc, argv);
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    std::cerr << "usage: effnet_image_tool decode OUT PATH... | encode IN.raw W H C OUT.jpg [OPT...] | "
                 "bench RESIZE CROP INTERPOLATION PATH...\n";
    return 2;
}
