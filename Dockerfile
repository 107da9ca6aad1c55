# effnet in a container: the README's quick start, built in one stage and run from another.
#
#   docker build -t effnet .
#   docker run --rm --gpus all effnet                      # classifies the sample photos on the GPU
#   docker run --rm --gpus all -v $PWD/photos:/photos effnet \
#       effnet-classify --weights /opt/effnet/efficientnet_lite0.safetensors \
#       --labels /opt/effnet/imagenet_classes.txt /photos
#
# Not built or run by the project's own checks: its machines have no container runtime (a docker
# client without a daemon) and reach no image registry.

# ---- build: what tools/demo.sh does (dependencies, CUDA build, weights from PyPI), plus the .deb
FROM nvidia/cuda:13.0.2-devel-ubuntu24.04 AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        cmake g++ make python3 python3-pip python3-numpy catch2 libstb-dev nlohmann-json3-dev \
        libbenchmark-dev libxxhash-dev libjpeg-turbo8-dev libopenmpi-dev openmpi-bin \
        file dpkg-dev && \
    rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DEFFNET_ENABLE_CUDA=ON \
        -DEFFNET_BUILD_TESTS=OFF -DEFFNET_BUILD_BENCH=OFF && \
    cmake --build build -j"$(nproc)" && \
    cpack --config build/CPackConfig.cmake -B build/package
RUN PIP_BREAK_SYSTEM_PACKAGES=1 EFFNET_DATA_DIR=/opt/effnet weights/fetch.sh lite0

# ---- run: the CUDA runtime (cuBLAS included), the package, the weights and the sample photos
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04
COPY --from=build /src/build/package/effnet_*.deb /tmp/
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends /tmp/effnet_*.deb && \
    rm -rf /var/lib/apt/lists/* /tmp/effnet_*.deb
COPY --from=build /opt/effnet /opt/effnet
CMD ["effnet-classify", "--weights", "/opt/effnet/efficientnet_lite0.safetensors", \
     "--labels", "/opt/effnet/imagenet_classes.txt", "--device", "auto", "--top-k", "5", \
     "/opt/effnet/samples"]
