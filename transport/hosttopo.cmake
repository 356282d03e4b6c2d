# Host topology (hwloc discovery, rank pinning plan): a small library of its own so that epx-run links
# it without the rest of transport; epx_transport re-exports it. Included at the end of
# transport/CMakeLists.txt.
add_library(epx_hosttopo STATIC ${CMAKE_CURRENT_LIST_DIR}/host_topology.cc)
target_include_directories(epx_hosttopo PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(epx_hosttopo PUBLIC epx_core PkgConfig::HWLOC PkgConfig::NUMA)
if(TARGET epx_transport)
  target_link_libraries(epx_transport PUBLIC epx_hosttopo)
endif()
