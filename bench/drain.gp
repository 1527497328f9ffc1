# The drain plot of bench/run (docs/benchmarks-drain.png). Variables from `gnuplot -e`:
#   t0       the daemon's start, unix ms
#   xmax     the last second shown
#   rate     "seconds rate" lines: events/s the subscriber counted
#   samples  "unix_ms vmrss_kb pending" lines from the sampler
#   out      the PNG to write
#   title    the plot's title
set terminal pngcairo size 900,720 font ",9"
set output out
set multiplot layout 3,1 title title
set grid
set key top right
set lmargin 12
set xrange [0:xmax]
set ylabel "k events/s"
plot rate using 1:($2 / 1000) with linespoints lw 2 pt 7 ps 0.5 title "drain rate (ids the subscriber counted)"
set ylabel "k events"
plot samples using (($1 - t0) / 1000):($3 / 1000) with lines lw 2 title "queue depth (pending in the buffer)"
set ylabel "MB"
set xlabel "seconds since the daemon was started"
set yrange [0:*]
plot samples using (($1 - t0) / 1000):($2 / 1024) with lines lw 2 title "daemon VmRSS"
unset multiplot
