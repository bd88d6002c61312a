# SPDX-License-Identifier: Apache-2.0
# Server CPU per message against connections, one panel per message size.
#   gnuplot -e "data='chart.dat'; output='cpu_per_message.png'" chart.gnuplot
# Columns of 'data': connections, then samplex, libuv, epoll for 64 B, then
# the same for 4 KiB (report.py writes it).
set terminal pngcairo size 1200,520 font ",11"
set output output
set multiplot layout 1,2 title "Echo server CPU per message (lower is better; server on one core, generator on the other)"
set logscale x
set xrange [0.7:14000]
set xtics ("1" 1, "50" 50, "1,000" 1000, "10,000" 10000)
set xlabel "connections"
set ylabel "server CPU microseconds per message"
set yrange [0:*]
set grid
set key top right Left reverse box opaque
set style line 1 lc rgb "#d62728" lw 2 pt 7 ps 1.2
set style line 2 lc rgb "#1f77b4" lw 2 pt 5 ps 1.2
set style line 3 lc rgb "#2ca02c" lw 2 pt 9 ps 1.4
set title "64 B messages"
plot data using 1:2 with linespoints ls 1 title "samplex", \
     data using 1:3 with linespoints ls 2 title "libuv", \
     data using 1:4 with linespoints ls 3 title "epoll"
set title "4 KiB messages"
plot data using 1:5 with linespoints ls 1 title "samplex", \
     data using 1:6 with linespoints ls 2 title "libuv", \
     data using 1:7 with linespoints ls 3 title "epoll"
unset multiplot
